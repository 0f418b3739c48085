"""streamd parity MODE: run a model on a reference and a test device/dtype and compare them.

Prints a table of thresholded checks (see docs/parity.md), writes a JSON report with --out
and exits 0 when every check passes, 1 when any fails, 2 when the run itself could not happen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from streamd.devices import DeviceError
from streamd.log import get_logger
from streamd.offline.report import Comparison, SideResult, SideSpec, emit_report, run_checks

log = get_logger(__name__)

SideRunner = Callable[[SideSpec], SideResult]
Comparator = Callable[[SideResult, SideResult], Comparison]


@dataclass(frozen=True)
class ParityMode:
    """One ``streamd parity`` sub-command: its extra options and how to build its two halves."""

    help: str
    build: Callable[[argparse.Namespace], tuple[SideRunner, Comparator]]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


def _whisper(args: argparse.Namespace) -> tuple[SideRunner, Comparator]:
    from streamd.offline import whisper

    return whisper.parity_side(args.model, args.audio, args.warmup, args.runs), whisper.compare


def _aligner_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transcript", action="append", required=True,
                        help="text to align: once for all files, or once per --audio file in order")


def _aligner(args: argparse.Namespace) -> tuple[SideRunner, Comparator]:
    from streamd.offline import aligner

    transcripts = aligner.transcripts_per_file(args.transcript, args.audio)
    return aligner.parity_side(args.model, args.audio, transcripts, args.warmup, args.runs), aligner.compare


def _rnnt_arguments(parser: argparse.ArgumentParser) -> None:
    from streamd.commands.transcribe import parse_att_context_size

    parser.add_argument("--att-context-size", type=parse_att_context_size, default=(70, 13),
                        help="LEFT,RIGHT or chunk ms (default 70,13 = 1120 ms)")


def _rnnt(args: argparse.Namespace) -> tuple[SideRunner, Comparator]:
    from streamd.offline import rnnt_parity

    side = rnnt_parity.parity_side(args.model, args.audio, args.att_context_size, args.warmup, args.runs)
    return side, rnnt_parity.compare


# Mode name -> ParityMode. A new mode (e.g. `rnnt`) is one more entry: a `build` returning its
# run_side(SideSpec) -> SideResult and compare(ref, test) -> Comparison, plus any extra options.
MODES: dict[str, ParityMode] = {
    "whisper": ParityMode("transformers Whisper: encoder, first-step logits, greedy tokens", _whisper),
    "aligner": ParityMode("Wav2Vec2 CTC forced aligner: logits and alignment", _aligner, _aligner_arguments),
    "rnnt": ParityMode("NeMo RNNT (.nemo): features, encoder, tokens; offline and streaming", _rnnt,
                       _rnnt_arguments),
}


def _runs(text: str) -> int:
    if int(text) < 1:
        raise argparse.ArgumentTypeError("needs at least 1 timed run")
    return int(text)


def side_arg(text: str) -> SideSpec:
    """argparse type for ``device=D,dtype=T`` (also used by ``streamd bench offline``)."""
    try:
        return SideSpec.parse(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("parity", help="compare a model across devices/dtypes against thresholds",
                                   description=__doc__)
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    for name, mode in MODES.items():
        sub = modes.add_parser(name, help=mode.help)
        sub.add_argument("--model", required=True, help="model directory (rnnt: .nemo file)")
        sub.add_argument("--audio", nargs="+", required=True, metavar="FILE", help="audio files")
        sub.add_argument("--ref", type=side_arg, default=SideSpec(), metavar="device=D,dtype=T",
                         help="reference side (default device=cpu,dtype=float32)")
        sub.add_argument("--test", type=side_arg, required=True, metavar="device=D,dtype=T",
                         help="side under test")
        sub.add_argument("--out", help="write the JSON report here")
        sub.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default 1)")
        sub.add_argument("--runs", type=_runs, default=3, help="timed runs per measurement (default 3)")
        mode.add_arguments(sub)
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        run_side, compare = MODES[args.mode].build(args)
        report = run_checks(args.mode, args.model, args.ref, args.test, run_side, compare)
    except (DeviceError, ValueError, OSError) as exc:
        log.error("parity run failed", mode=args.mode, error=str(exc))
        print(f"streamd parity {args.mode}: {exc}", file=sys.stderr)
        return 2
    return emit_report(report, args.out)
