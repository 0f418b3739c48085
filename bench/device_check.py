"""Does the streaming engine recognize known input on a device? The tone model on tone audio.

    python bench/device_check.py TONE_MODEL.nemo --device cuda [--dtype float32 --dtype bfloat16]
        [--encoder-cuda-graphs off,on]

For each dtype, encoder CUDA graph setting and chunk size, random tone sequences (known letters)
run through the engine as concurrent streams in one batch (of several lengths: the batch shrinks
as they end), and every transcript is compared with the letters sent.
Speed benchmarks use untrained models; this is the check that the device path is also right.
Exit status: 0 all recognized, 3 a transcript differs, 1 the engine failed.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from streamd.commands.transcribe import CHUNK_MS
from streamd.engine.encoder_step import encoder_step
from streamd.engine.loading import prepare_model
from streamd.engine.stream import StreamOptions
from streamd.models import tones
from streamd.transcribe import transcribe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the tone model (.nemo from `streamd model create --arch tiny --train tones`)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", action="append", help="repeatable (default float32 and bfloat16)")
    parser.add_argument("--streams", type=int, default=16, help="sequences per batch (default 16)")
    parser.add_argument("--encoder-cuda-graphs", default="off,on", help="comma list of off/on (default off,on)")
    args = parser.parse_args()
    rng = np.random.default_rng(11)
    sequences = [tones.random_sequence(rng, 3, 8) for _ in range(args.streams)]
    wrong = 0
    for dtype in args.dtype or ["float32", "bfloat16"]:
        model = prepare_model(args.model, args.device, dtype)
        for graphs in args.encoder_cuda_graphs.split(","):
            encoder_step(model).set_cuda_graphs(graphs == "on")
            for chunk_ms, size in sorted(CHUNK_MS.items()):
                results, seconds = transcribe(model, [s.audio for s in sequences], "streaming",
                                              StreamOptions(att_context_size=size, word_timestamps=False))
                right = sum(r.text == s.text for r, s in zip(results, sequences))
                wrong += len(sequences) - right
                print(f"{args.device} {dtype} encoder graphs {graphs} {chunk_ms} ms: {right}/{len(sequences)} "
                      f"transcripts exact, {seconds:.2f} s, {encoder_step(model).graphs_captured} graphs", flush=True)
                for result, sequence in zip(results, sequences):
                    if result.text != sequence.text:
                        print(f"  sent {sequence.text!r}, heard {result.text!r}")
    return 3 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
