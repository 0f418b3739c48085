"""``streamd transcribe``: transcribe files, one JSON object per file with ``--json``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from streamd.audio import AudioError, load_audio
from streamd.engine.endpointing import EndpointingOptions
from streamd.engine.stream import StreamOptions
from streamd.log import get_logger

log = get_logger(__name__)
CHUNK_MS = {80: (70, 0), 160: (70, 1), 560: (70, 6), 1120: (70, 13)}


def parse_att_context_size(text: str) -> tuple[int, int]:
    """``"70,13"`` or a chunk length in ms (``"1120"``) -> ``(70, 13)``."""
    parts = [p for p in text.replace("[", "").replace("]", "").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an att_context_size: {text!r} (use e.g. 70,13)") from None
    if len(values) == 2:
        return values[0], values[1]
    if len(values) == 1 and values[0] in CHUNK_MS:
        return CHUNK_MS[values[0]]
    raise argparse.ArgumentTypeError(f"use LEFT,RIGHT (e.g. 70,13) or a chunk of {sorted(CHUNK_MS)} ms")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("transcribe", help="transcribe audio files (RNNT streaming/offline, or Whisper)")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--model", default="", help=".nemo file or pretrained name (default: the model shipped with "
                        "streamd), or (whisper) a model dir")
    parser.add_argument("--engine", choices=("rnnt", "whisper"), default="rnnt")
    parser.add_argument("--mode", choices=("streaming", "offline"), default="streaming",
                        help="rnnt: through the streaming engine (default) or whole-file")
    parser.add_argument("--att-context-size", type=parse_att_context_size, default=(70, 13),
                        help="LEFT,RIGHT or chunk ms: 70,13=1120 ms (default), 70,6=560, 70,1=160, 70,0=80")
    parser.add_argument("--endpointing-ms", type=int, default=0,
                        help="streaming: split utterances after this much silence (0 = off)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda[:N]|npu[:N]")
    parser.add_argument("--dtype", default="float32", help="float32|float16|bfloat16")
    parser.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    parser.set_defaults(func=run)


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result), flush=True)
    elif "error" in result:
        print(f"{result['file']}: ERROR {result['error']}", flush=True)
    else:
        print(f"{result['file']}: {result['text']}", flush=True)


def run(args: argparse.Namespace) -> int:
    if args.engine == "whisper":
        if not args.model:
            print("streamd transcribe: --engine whisper needs --model DIR (a Whisper model directory)",
                  file=sys.stderr)
            return 2
        from streamd.offline.whisper import transcribe_files

        failed = 0
        for result in transcribe_files(args.model, args.files, device=args.device, dtype=args.dtype):
            failed += "error" in result
            _emit(result, args.json)
        return 1 if failed else 0

    from streamd.engine.loading import UNTRAINED_WARNING, is_untrained, prepare_model
    from streamd.models.bundled import model_or_default
    from streamd.transcribe import transcribe

    model = prepare_model(model_or_default(args.model), args.device, args.dtype)
    if is_untrained(model):
        log.warning(UNTRAINED_WARNING)
    endpointing = EndpointingOptions(enabled=args.endpointing_ms > 0, silence_ms=args.endpointing_ms or 800)
    options = StreamOptions(att_context_size=args.att_context_size, endpointing=endpointing)
    rate = int(model.cfg.preprocessor.sample_rate)
    failed = 0
    for path in args.files:
        base = {"file": path, "engine": "rnnt", "mode": args.mode, "att_context_size": list(args.att_context_size)}
        try:
            audio, duration = load_audio(path, rate)
        except AudioError as exc:
            failed += 1
            _emit({**base, "error": str(exc)}, args.json)
            continue
        (result,), seconds = transcribe(model, [audio], args.mode, options)
        _emit({
            **base,
            "text": result.text,
            "tokens": result.tokens,
            "words": [w.to_dict() for w in result.words],
            "audio_seconds": round(duration, 3),
            "compute_seconds": round(seconds, 4),
        }, args.json)
    if failed:
        print(f"{failed} of {len(args.files)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0
