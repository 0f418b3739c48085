"""The shipped spoken-digits model on real human speech (the Asterisk prompts, which no training
voice comes from): its error rate through the streaming engine, streaming == offline, what a
person's audio looks like (leading silence, 8 kHz phone audio, stereo, quiet), and a real
server with the replay client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamd.models import digits, real_speech
from streamd.models.architectures import ATT_CONTEXT_SIZES
from streamd.models.digits_score import score_streaming
from streamd.serverproc import start_server
from tests.conftest import ROOT, streamd_cli

# The targets on real speech; docs/models.md has the measured figures.
WER_TARGET = {(70, 13): 0.05, (70, 1): 0.10}
SAMPLE_RATE = 16000


# No trained digits model is shipped yet (issue 23 is open: docs/models.md, "Status"); these
# tests run as soon as streamd/models/data/digits.nemo exists.
pytestmark = pytest.mark.skipif(not digits.shipped_model_path().exists(),
                                reason="no digits model shipped yet: docs/models.md, Status")


@pytest.fixture(scope="module")
def model_path() -> Path:
    return digits.shipped_model_path()


@pytest.fixture(scope="module")
def model(model_path: Path):
    from streamd.engine.loading import load_model

    return load_model(str(model_path))


@pytest.fixture(scope="module")
def test_set() -> list[real_speech.Clip]:
    return [clip for clips in real_speech.digits_test_set().values() for clip in clips]


@pytest.mark.parametrize("size", ATT_CONTEXT_SIZES, ids=lambda s: f"{(s[1] + 1) * 80}ms")
def test_real_speech_through_the_streaming_engine(model, test_set, size):
    """Word error rate within the targets at 1120 and 160 ms; at every chunk size the streamed
    tokens equal the offline ones exactly."""
    result = score_streaming(model, test_set, size)
    assert not result.offline_differs, f"streaming != offline for {result.offline_differs}"
    summary = result.score.summary()
    print(json.dumps(summary))
    if size in WER_TARGET:
        assert result.score.word_error_rate <= WER_TARGET[size], summary


def transcribe_files(model_path: Path, paths: list[Path], chunk: tuple[int, int] = (70, 6)) -> dict[str, str]:
    """`streamd transcribe --mode streaming`, as a user runs it: file name -> transcript."""
    proc = streamd_cli("transcribe", *map(str, paths), "--model", str(model_path), "--mode", "streaming",
                       "--att-context-size", f"{chunk[0]},{chunk[1]}", "--json")
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {Path(r["file"]).name: r["text"] for r in results}


def phone_number(test_set: list[real_speech.Clip]) -> tuple[np.ndarray, str]:
    """"four one five, five five five, oh one nine two" from the real prompts, grouped with pauses."""
    words = ["four", "one", "five", ",", "five", "five", "five", ",", "oh", "one", "nine", "two"]
    by_word = {c.transcript: c.audio for c in test_set if c.name.endswith(".g722") and c.name.startswith("digits/")}
    pause = np.zeros(int(0.4 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([pause if w == "," else by_word[w] for w in words])
    return audio, " ".join(w for w in words if w != ",")


def test_a_persons_typical_input(model_path, test_set, tmp_path):
    """Files as people have them, through `streamd transcribe` (streaming): 2 s of silence
    before speaking, a phone recording at 8 kHz, stereo at 44.1 kHz, and a quiet recording."""
    audio, words = phone_number(test_set)
    expected = digits.normalize(words)
    lead = np.concatenate([np.random.default_rng(0).normal(0, 3e-4, 2 * SAMPLE_RATE).astype(np.float32), audio])
    sf.write(tmp_path / "lead.wav", lead, SAMPLE_RATE)
    sf.write(tmp_path / "phone8k.wav", soxr.resample(audio, SAMPLE_RATE, 8000), 8000, subtype="PCM_16")
    stereo = soxr.resample(audio, SAMPLE_RATE, 44100)
    sf.write(tmp_path / "stereo.wav", np.stack([stereo, 0.8 * stereo], axis=1), 44100)
    sf.write(tmp_path / "quiet.wav", audio * 10 ** (-30 / 20), SAMPLE_RATE)  # 30 dB down
    # And a real 8 kHz recording: the prompt release as a phone system plays it.
    seven = real_speech.SOUNDS_DIR / "digits" / "7.wav"
    files = ["lead.wav", "phone8k.wav", "stereo.wav", "quiet.wav"]
    heard = transcribe_files(model_path, [tmp_path / name for name in files] + [seven])
    assert {name: digits.normalize(heard[name]) for name in files} == dict.fromkeys(files, expected)
    assert digits.normalize(heard["7.wav"]) == ["7"]


def test_the_replay_client_through_a_real_server_gets_the_digits(model_path, test_set, tmp_path):
    audio, words = phone_number(test_set)
    path = tmp_path / "number.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    server = start_server(model_path, tmp_path / "server.log")
    try:
        replay = subprocess.run([sys.executable, "-m", "clients.replay", server.url, str(path), "--fast", "--json",
                                 "--chunk-ms", "160"], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert replay.returncode == 0, replay.stderr[-3000:]
        result = json.loads(replay.stdout)
        assert digits.normalize(result["text"]) == digits.normalize(words), result["text"]
    finally:
        assert server.stop() == 0, server.log_tail()
