"""Does the streaming engine recognize known input on a device? The tone model on tone audio.

    python bench/device_check.py TONE_MODEL.nemo --device cuda [--dtype float32 --dtype bfloat16]

For each dtype and chunk size, random tone sequences (known letters) run through the engine
as concurrent streams in one batch, and every transcript is compared with the letters sent.
Speed benchmarks use untrained models; this is the check that the device path is also right.
Exit status: 0 all recognized, 3 a transcript differs, 1 the engine failed.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from streamd import tones
from streamd.commands.transcribe import CHUNK_MS
from streamd.engine.stream import StreamOptions
from streamd.models import prepare_model
from streamd.transcribe import transcribe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the tone model (.nemo from `streamd model create --arch tiny --train tones`)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", action="append", help="repeatable (default float32 and bfloat16)")
    parser.add_argument("--streams", type=int, default=16, help="sequences per batch (default 16)")
    args = parser.parse_args()
    rng = np.random.default_rng(11)
    sequences = [tones.random_sequence(rng, 3, 8) for _ in range(args.streams)]
    wrong = 0
    for dtype in args.dtype or ["float32", "bfloat16"]:
        model = prepare_model(args.model, args.device, dtype)
        for chunk_ms, size in sorted(CHUNK_MS.items()):
            results, seconds = transcribe(model, [s.audio for s in sequences], "streaming",
                                          StreamOptions(att_context_size=size, word_timestamps=False))
            right = sum(r.text == s.text for r, s in zip(results, sequences))
            wrong += len(sequences) - right
            print(f"{args.device} {dtype} {chunk_ms} ms: {right}/{len(sequences)} transcripts exact, "
                  f"{seconds:.2f} s", flush=True)
            for result, sequence in zip(results, sequences):
                if result.text != sequence.text:
                    print(f"  sent {sequence.text!r}, heard {result.text!r}")
    return 3 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
