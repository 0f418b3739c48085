"""``streamd tones LETTERS --out FILE.wav``: tone-alphabet audio to try the tone model with."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tones", help="write tone-alphabet audio (letters a-h) to a WAV file")
    parser.add_argument("letters", help="letters a-h to spell, e.g. 'acb' (spaces are ignored)")
    parser.add_argument("--out", required=True, help="output WAV file (16 kHz mono, 16-bit)")
    parser.add_argument("--seed", type=int, default=0, help="random tone lengths, gaps and phases (default 0)")
    parser.set_defaults(func=run_tones)


def run_tones(args: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf

    from streamd.models import tones

    letters = args.letters.replace(" ", "")
    unknown = sorted(set(letters) - set(tones.LETTERS))
    if unknown or not letters:
        print(f"letters must be among {tones.LETTERS!r}; got {args.letters!r}", file=sys.stderr)
        return 2
    sequence = tones.synthesize(letters, np.random.default_rng(args.seed))
    sf.write(args.out, sequence.audio, tones.SAMPLE_RATE, subtype="PCM_16")
    print(f"{args.out}: {len(sequence.audio) / tones.SAMPLE_RATE:.2f} s, transcript {sequence.text!r}")
    return 0
