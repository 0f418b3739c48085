"""Benchmark CTC forced alignment (no network forward): milliseconds per 5 s of audio on CPU.

Synthetic log-probs stand in for the model: 250 frames (5 s at the 20 ms stride of wav2vec2/MMS),
a 31-symbol character vocabulary and a 15-word transcript of 77 characters (3 words per second, a brisk
speaking rate), so the Viterbi search does the same work as on real speech. The timed call is
:func:`streamd.offline.aligner.align_tokens`, i.e. encoding the transcript, the Viterbi search
and building token and word segments; the log-softmax is included too.

Usage: python bench/align_speed.py [--seconds 5] [--runs 200] [--out align_speed.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import string
import time

import numpy as np

from streamd.offline.aligner import CharVocabulary, align_tokens, log_softmax

FRAME_SECONDS = 0.02
BUDGET_MS = 10.0  # per 5 s of audio (the requirement this benchmark checks)
TRANSCRIPT = "please call stella and ask her to bring these things with her from the store"


def synthetic_logits(frames: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """CTC-like float32 logits: blank-heavy, with random character scores."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (frames, vocab_size)).astype(np.float32)
    logits[:, 0] += 4.0
    return logits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="audio duration to simulate")
    parser.add_argument("--runs", type=int, default=200, help="timed repetitions")
    parser.add_argument("--out", default="align_speed.json", help="JSON result file")
    args = parser.parse_args()

    symbols = ["<blank>", "|", *string.ascii_lowercase, "'", "<unk>", "<star>"]
    vocab = CharVocabulary({s: i for i, s in enumerate(symbols)}, blank=0, delimiter="|")
    frames = round(args.seconds / FRAME_SECONDS)
    logits = synthetic_logits(frames, len(symbols))

    def run() -> None:
        align_tokens(log_softmax(logits), vocab, TRANSCRIPT, FRAME_SECONDS)

    run()  # warm-up
    times_ms = []
    for _ in range(args.runs):
        start = time.perf_counter()
        run()
        times_ms.append((time.perf_counter() - start) * 1e3)
    per_5s = float(np.median(times_ms)) * 5.0 / args.seconds
    result = {
        "audio_seconds": args.seconds,
        "frames": frames,
        "transcript_chars": len(TRANSCRIPT),
        "vocab_size": len(symbols),
        "runs": args.runs,
        "median_ms": float(np.median(times_ms)),
        "mean_ms": float(np.mean(times_ms)),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "min_ms": float(np.min(times_ms)),
        "median_ms_per_5s_audio": per_5s,
        "budget_ms_per_5s_audio": BUDGET_MS,
        "within_budget": per_5s <= BUDGET_MS,
        "machine": platform.processor() or platform.machine(),
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
