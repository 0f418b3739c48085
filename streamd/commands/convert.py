"""`streamd convert KIND SRC OUT`: turn a model in another runtime's format into one streamd loads."""

from __future__ import annotations

import argparse
import sys

from streamd.log import get_logger

log = get_logger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert a model directory to a format streamd loads")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    ct2 = kinds.add_parser("ct2-whisper",
                           help="CTranslate2 Whisper (model.bin) -> transformers Whisper directory")
    ct2.add_argument("src", metavar="SRC_DIR",
                     help="CTranslate2 directory: model.bin, config.json, tokenizer.json")
    ct2.add_argument("out", metavar="OUT_DIR", help="output directory (created)")
    ct2.set_defaults(func=run_ct2_whisper)


def run_ct2_whisper(args: argparse.Namespace) -> int:
    from streamd.offline.ct2_whisper import convert_ct2_whisper

    try:
        out = convert_ct2_whisper(args.src, args.out)
    except (OSError, ValueError) as exc:
        log.error("conversion failed", src=args.src, error=str(exc))
        print(f"streamd convert ct2-whisper: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
