"""CTC forced alignment: exact against brute force and hand-built cases; the aligner CLI and parity.

The model tests use an UNTRAINED tiny Wav2Vec2ForCTC with an MMS-style character vocabulary:
its alignments are valid paths but meaningless, so they check mechanics, never accuracy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import operator
from pathlib import Path

import numpy as np
import pytest
from conftest import streamd_cli

from streamd.commands import align as align_command
from streamd.offline.aligner import CharVocabulary, align_tokens, forced_align

pytest_plugins = ["conftest_offline"]


def random_log_probs(rng: np.random.Generator, frames: int, vocab: int) -> np.ndarray:
    logits = rng.normal(0.0, 2.0, (frames, vocab))
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def collapse(path: tuple[int, ...], blank: int) -> tuple[int, ...]:
    """CTC's many-to-one map: merge repeats, then drop blanks."""
    return tuple(symbol for symbol, _ in itertools.groupby(path) if symbol != blank)


def brute_force(log_probs: np.ndarray, targets: tuple[int, ...], blank: int) -> tuple[tuple[int, ...], float]:
    """The best frame labelling that collapses to ``targets``, by trying every labelling."""
    frames, vocab = log_probs.shape
    paths = np.array(list(itertools.product(range(vocab), repeat=frames)))
    scores = log_probs[np.arange(frames), paths].sum(axis=1)
    valid = np.array([collapse(tuple(p), blank) == targets for p in paths])
    best = int(np.argmax(np.where(valid, scores, -np.inf)))
    return tuple(paths[best].tolist()), float(scores[best])


def labels_of(path: np.ndarray, targets: tuple[int, ...], blank: int) -> tuple[int, ...]:
    """forced_align's path (target index or -1) as per-frame vocabulary labels."""
    return tuple(blank if i < 0 else targets[i] for i in path.tolist())


@pytest.mark.parametrize(
    "targets, frames, blank",
    [((1, 1), 5, 0),          # repeated character: needs a blank between the two
     ((1, 1, 1), 6, 0),       # three repeats: two blanks
     ((1, 3, 1, 2), 7, 0),    # "a|ab": word delimiter (3) between words
     ((2,), 6, 0),
     ((0, 0, 2), 7, 3)],      # blank is not id 0
)
@pytest.mark.parametrize("seed", range(4))
def test_forced_align_matches_brute_force(
    targets: tuple[int, ...], frames: int, blank: int, seed: int
) -> None:
    log_probs = random_log_probs(np.random.default_rng(seed), frames, 4)
    expected_labels, expected_score = brute_force(log_probs, targets, blank)
    path, score = forced_align(log_probs, list(targets), blank)
    assert labels_of(path, targets, blank) == expected_labels
    assert score == pytest.approx(expected_score)
    # Each target index occupies one contiguous run of frames, in order.
    emitted = [i for i, _ in itertools.groupby(path.tolist()) if i >= 0]
    assert emitted == list(range(len(targets)))


def test_forced_align_puts_the_blank_where_it_costs_least() -> None:
    """Greedy decoding would read 'a' on every frame (one 'a'); 'aa' forces one blank frame.

    Blank is likeliest at frame 2 (0.4 against 0.1 elsewhere), so the best path is a a - a a.
    """
    p_blank = np.array([0.1, 0.1, 0.4, 0.1, 0.1])
    log_probs = np.log(np.stack([p_blank, 1 - p_blank], axis=1))
    path, score = forced_align(log_probs, [1, 1], blank=0)
    assert path.tolist() == [0, 0, -1, 1, 1]
    assert score == pytest.approx(4 * math.log(0.9) + math.log(0.4))


def test_forced_align_refuses_a_transcript_longer_than_the_audio() -> None:
    log_probs = np.log(np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="no CTC path"):
        forced_align(log_probs, [1, 1], blank=0)  # a, blank, a needs three frames


def peaked_log_probs(frame_symbols: list[int], vocab: int, peak: float = 0.9) -> np.ndarray:
    probs = np.full((len(frame_symbols), vocab), (1 - peak) / (vocab - 1))
    probs[np.arange(len(frame_symbols)), frame_symbols] = peak
    return np.log(probs)


def test_align_tokens_word_segments_across_the_delimiter() -> None:
    vocab = CharVocabulary({"<blank>": 0, "a": 1, "b": 2, "|": 3, "c": 4}, blank=0, delimiter="|")
    # frame:        0  1  2  3  4  5  6  7  8  9
    frame_symbols = [0, 1, 1, 2, 0, 3, 0, 4, 4, 0]
    alignment = align_tokens(peaked_log_probs(frame_symbols, 5), vocab, "AB, c!", frame_seconds=0.02)
    tokens = [(s.label, s.start_frame, s.end_frame) for s in alignment.tokens]
    assert tokens == [("a", 1, 3), ("b", 3, 4), ("|", 5, 6), ("c", 7, 9)]
    words = [(s.label, s.start_frame, s.end_frame, s.start, s.end) for s in alignment.words]
    assert words == [("ab", 1, 4, pytest.approx(0.02), pytest.approx(0.08)),
                     ("c", 7, 9, pytest.approx(0.14), pytest.approx(0.18))]
    assert all(s.score == pytest.approx(0.9) for s in alignment.tokens)


def test_align_tokens_repeated_letter_across_words_needs_no_blank() -> None:
    vocab = CharVocabulary({"<blank>": 0, "a": 1, "|": 2}, blank=0, delimiter="|")
    alignment = align_tokens(peaked_log_probs([1, 2, 1], 3), vocab, "a a", frame_seconds=0.02)
    assert [(s.label, s.start_frame) for s in alignment.tokens] == [("a", 0), ("|", 1), ("a", 2)]


def test_untrained_aligner_refuses_audio_too_short_to_align(untrained_aligner_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    import soundfile as sf

    short = tmp_path / "click.wav"
    sf.write(short, np.ones(200, dtype=np.float32) * 0.1, 16000)  # 12.5 ms: less than one frame
    args = argparse.Namespace(model=str(untrained_aligner_dir), file=str(short), transcript="a",
                              device="cpu", dtype="float32", json=True)
    assert align_command.run(args) == 2
    assert "click.wav: 0.013 s of audio is too short to align" in capsys.readouterr().err


def run_aligner_parity(model: Path, speech, test_side: str, out: Path):
    proc = streamd_cli("parity", "aligner", "--model", str(model), "--audio", str(speech.path),
                       "--transcript", speech.text, "--test", test_side, "--warmup", "0", "--runs", "1",
                       "--out", str(out), check=False)
    return proc, json.loads(out.read_text())


# docs/parity.md thresholds, restated so the test judges the report independently.
ALIGNER_SPEC = {
    "logits_rel_err": (operator.lt, 0.01),
    "logits_within_1pct": (operator.gt, 0.99),
    "alignment_mismatches": (operator.eq, 0),
}


def assert_checks_follow_spec(proc, report: dict) -> dict[str, float]:
    checks = report["checks"]
    assert sorted(c["name"] for c in checks) == sorted(ALIGNER_SPEC)
    for check in checks:
        compare, threshold = ALIGNER_SPEC[check["name"]]
        assert check["threshold"] == threshold
        assert check["passed"] == compare(check["value"], threshold), check
    passed = all(c["passed"] for c in checks)
    assert report["passed"] is passed
    assert proc.returncode == (0 if passed else 1), proc.stderr[-2000:]
    return {c["name"]: c["value"] for c in checks}


def test_untrained_aligner_parity_float32_against_itself_is_exact(
    untrained_aligner_dir: Path, speech, tmp_path: Path
) -> None:
    proc, report = run_aligner_parity(untrained_aligner_dir, speech, "device=cpu,dtype=float32",
                                      tmp_path / "r.json")
    values = assert_checks_follow_spec(proc, report)
    assert proc.returncode == 0
    assert values == {"logits_rel_err": 0.0, "logits_within_1pct": 1.0, "alignment_mismatches": 0}
    info = report["metrics"][str(speech.path)]
    assert info["logits_max_abs_diff"] == 0.0 and info["logits_within_0.1pct"] == 1.0


def test_untrained_aligner_parity_float32_vs_bfloat16_reports_real_numbers(
    untrained_aligner_dir: Path, speech, tmp_path: Path
) -> None:
    proc, report = run_aligner_parity(untrained_aligner_dir, speech, "device=cpu,dtype=bfloat16",
                                      tmp_path / "r.json")
    values = assert_checks_follow_spec(proc, report)
    assert 0.0 < values["logits_rel_err"] < 0.5  # bfloat16 differs, but computes the same network
    assert 0.0 <= values["logits_within_1pct"] < 1.0
    info = report["metrics"][str(speech.path)]
    assert 0.0 < info["logits_mean_abs_diff"] <= info["logits_max_abs_diff"]
    assert info["logits_within_0.1pct"] <= values["logits_within_1pct"]
    for side in ("ref", "test"):
        assert report["timing"][side]["forward_mean_s"] > 0 and report["timing"][side]["align_s"] > 0


def test_untrained_aligner_align_cli_prints_ordered_segments_within_the_audio(
    untrained_aligner_dir: Path, speech, capsys: pytest.CaptureFixture
) -> None:
    import soundfile as sf

    proc = streamd_cli("align", "--model", str(untrained_aligner_dir), str(speech.path),
                       "--transcript", speech.text.capitalize() + ".", "--json")
    result = json.loads(proc.stdout)
    info = sf.info(str(speech.path))
    duration = info.frames / info.samplerate
    assert result["audio_seconds"] == pytest.approx(duration, abs=1e-3)
    words = speech.text.split()
    assert [s["label"] for s in result["tokens"]] == list("|".join(words))
    assert [s["label"] for s in result["words"]] == words
    for kind in ("tokens", "words"):
        segments = result[kind]
        for before, after in itertools.pairwise(segments):
            assert before["end"] <= after["start"] + 1e-9
        assert all(0.0 <= s["start"] < s["end"] <= duration for s in segments)
    # A word spans exactly its characters.
    chars = [s for s in result["tokens"] if s["label"] != "|"]
    first = 0
    for word in result["words"]:
        span = chars[first:first + len(word["label"])]
        first += len(word["label"])
        assert (word["start"], word["end"]) == (span[0]["start"], span[-1]["end"])

    # Without --json: a table, one row per word and token (run in-process: no second start-up).
    args = argparse.Namespace(model=str(untrained_aligner_dir), file=str(speech.path), transcript=speech.text,
                              device="cpu", dtype="float32", json=False)
    assert align_command.run(args) == 0
    table = capsys.readouterr().out
    assert all(f"word  {w}" in table for w in words)
