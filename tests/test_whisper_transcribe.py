"""Converted Whisper tiny.en transcribes espeak-ng speech; transcribe_files output and errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamd.offline.whisper import transcribe_files

pytest_plugins = ["conftest_offline"]

# Robotic voice: allow a few recognition errors, far fewer than a broken model would make.
MAX_WER = 0.25


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation."""
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over normalized words, divided by the reference length."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_word != hyp_word))
    return row[-1] / len(ref)


@pytest.fixture(scope="module")
def results(tiny_en_dir: Path, speech, stereo_speech) -> list[dict]:
    """Both files in one call (one batch), CPU float32."""
    return transcribe_files(str(tiny_en_dir), [str(speech.path), str(stereo_speech.path)])


def test_word_error_rate_helper() -> None:
    assert word_error_rate("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert word_error_rate("Hello, world.", "hello world") == 0.0


def test_converted_tiny_en_transcribes_the_spoken_sentence(
    results: list[dict], speech, stereo_speech
) -> None:
    text = results[0]["text"]
    assert word_error_rate(speech.text, text) <= MAX_WER, text
    assert {"stella", "bring", "store"} <= set(normalize(text))
    # The downmixed, resampled second file (slower voice, harder for tiny.en) still reads as that sentence.
    assert {"quick", "lazy"} <= set(normalize(results[1]["text"]))
    assert word_error_rate(stereo_speech.text, results[1]["text"]) <= 0.5


def test_transcribe_files_result_shape(results: list[dict], speech, stereo_speech) -> None:
    paths = [speech.path, stereo_speech.path]
    assert [r["file"] for r in results] == [str(p) for p in paths]
    for result, path in zip(results, paths, strict=True):
        assert set(result) == {"file", "text", "tokens", "audio_seconds", "compute_seconds", "engine"}
        assert result["engine"] == "whisper"
        info = sf.info(str(path))
        assert result["audio_seconds"] == pytest.approx(info.frames / info.samplerate, abs=1e-3)
        assert result["compute_seconds"] > 0
        tokens = result["tokens"]
        assert tokens and all(isinstance(t, int) for t in tokens)
        # Text tokens only: no <|endoftext|> (50256) or later control/timestamp ids.
        assert max(tokens) < 50256


def test_tokens_decode_to_the_text(results: list[dict], tiny_en_dir: Path) -> None:
    from transformers import WhisperTokenizer

    tokenizer = WhisperTokenizer.from_pretrained(tiny_en_dir)
    for result in results:
        assert tokenizer.decode(result["tokens"]).strip() == result["text"]


def test_bad_file_raises_value_error_naming_it(tmp_path: Path, speech) -> None:
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"this is not audio")
    with pytest.raises(ValueError, match=r"garbage\.wav"):
        transcribe_files(str(tmp_path / "no-model-needed"), [str(speech.path), str(bad)])


def test_missing_file_raises_value_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.flac"):
        transcribe_files(str(tmp_path), [str(tmp_path / "missing.flac")])


def test_empty_file_gives_an_empty_transcript(tiny_en_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    [result] = transcribe_files(str(tiny_en_dir), [str(empty)])
    assert (result["text"], result["tokens"], result["audio_seconds"]) == ("", [], 0.0)


def test_audio_longer_than_30_seconds_is_transcribed_in_full(
    tiny_en_dir: Path, speech, tmp_path: Path
) -> None:
    """Eight repetitions (~35 s) take HF's long-form path, which must not stop after the first window."""
    samples, rate = sf.read(str(speech.path), dtype="float32")
    long_wav = tmp_path / "eight_times.wav"
    sf.write(long_wav, np.tile(samples, 8), rate)
    [result] = transcribe_files(str(tiny_en_dir), [str(long_wav)])
    assert result["audio_seconds"] > 30
    assert word_error_rate(" ".join([speech.text] * 8), result["text"]) <= MAX_WER, result["text"]
    assert normalize(result["text"]).count("stella") >= 7
