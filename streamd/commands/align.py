"""`streamd align --model M FILE --transcript TEXT`: CTC forced alignment of a transcript to audio."""

from __future__ import annotations

import argparse
import json
import sys

from streamd.devices import DeviceError
from streamd.log import get_logger

log = get_logger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("align", help="force-align a transcript to audio (token and word times)")
    parser.add_argument("file", metavar="FILE", help="audio file")
    parser.add_argument("--model", required=True, help="Wav2Vec2ForCTC directory with a character vocabulary")
    parser.add_argument("--transcript", required=True, help="text spoken in FILE")
    parser.add_argument("--device", default="cpu", help="auto|cpu|cuda[:N]|npu[:N] (default cpu)")
    parser.add_argument("--dtype", default="float32", help="float32|float16|bfloat16 (default float32)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def _table(result: dict) -> str:
    lines = [f"{result['file']} ({result['audio_seconds']} s)",
             f"{'kind':<6}{'label':<16}{'start':>8}{'end':>8}"]
    for kind in ("words", "tokens"):
        lines += [f"{kind[:-1]:<6}{s['label']:<16}{s['start']:>8.3f}{s['end']:>8.3f}" for s in result[kind]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from streamd.offline.aligner import align_file

    try:
        result = align_file(args.model, args.file, args.transcript, args.device, args.dtype)
    except (DeviceError, ValueError, OSError) as exc:
        log.error("alignment failed", file=args.file, error=str(exc))
        print(f"streamd align: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else _table(result))
    return 0
