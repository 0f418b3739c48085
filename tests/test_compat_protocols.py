"""Other servers' clients, unchanged, against a real ``streamd serve`` (the tone model).

Each client is that project's own package (OpenAI's ``openai``, Deepgram's ``deepgram-sdk``, ...),
run from a venv of its own (``compat_python``) by the scripts in tests/compat_clients/, which
print what the client parsed as JSON. Every expected transcript is the letters the test's tone
audio spells.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import ROOT

from streamd.models import tones
from streamd.serverproc import ServerProcess, start_server

CLIENTS = ROOT / "tests" / "compat_clients"


@pytest.fixture(scope="module")
def server(tone_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    started = start_server(tone_model_path, tmp_path_factory.mktemp("server") / "server.log", threads=1,
                           max_sessions=32, idle_timeout_s=20)
    yield started
    assert started.stop() == 0, started.log_tail()


def tone_wav(path: Path, sequences: list[tones.ToneSequence], rate: int, silence_s: float = 0.0,
             channels: int = 1) -> Path:
    """The sequences one after another, each followed by ``silence_s`` of the tones' light noise,
    as 16-bit PCM at ``rate``."""
    rng = np.random.default_rng(len(sequences))
    pieces = []
    for sequence in sequences:
        pieces += [sequence.audio, rng.normal(0.0, tones.NOISE_STD, int(silence_s * tones.SAMPLE_RATE))]
    audio = np.concatenate(pieces).astype(np.float32)
    if rate != tones.SAMPLE_RATE:
        audio = soxr.resample(audio, tones.SAMPLE_RATE, rate)
    sf.write(path, np.repeat(audio[:, None], channels, axis=1), rate, subtype="PCM_16")
    return path


def run_client(python: Path, script: str, *args: Any) -> dict[str, Any]:
    proc = subprocess.run([str(python), str(CLIENTS / script), *map(str, args)], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


def sequences(rng: np.random.Generator, count: int) -> list[tones.ToneSequence]:
    return [tones.synthesize(tones.random_letters(rng, 3, 5), rng) for _ in range(count)]


# ---------------------------------------------------------------------- OpenAI Realtime
@pytest.mark.parametrize("shape", ["ga", "beta"])
def test_openai_client_manual_commit_completes_the_letters(server: ServerProcess, compat_python: Path,
                                                           tmp_path: Path, rng: np.random.Generator, shape: str):
    [sequence] = sequences(rng, 1)
    wav = tone_wav(tmp_path / "speech.wav", [sequence], 24000)
    result = run_client(compat_python, "openai_realtime.py", server.port, wav, "--shape", shape,
                        "--turn", "manual", "--logprobs")
    [completed] = result["completed"]
    assert completed["transcript"] == sequence.text
    assert result["deltas"][completed["item_id"]] == completed["transcript"]  # the deltas add up to it
    types = [e["type"] for e in result["events"]]
    created = "transcription_session.created" if shape == "beta" else "session.created"
    updated = "transcription_session.updated" if shape == "beta" else "session.updated"
    assert types[:2] == [created, updated]
    assert "input_audio_buffer.committed" in types and "error" not in types
    assert "input_audio_buffer.speech_started" not in types  # turn detection is off
    assert completed["usage_seconds"] > 0
    # One log probability per word, from the model's own token probabilities.
    logprobs = completed["logprobs"]
    assert "".join(p["token"] for p in logprobs) == sequence.text
    assert all(-20 < p["logprob"] <= 0 for p in logprobs)


def test_openai_client_server_vad_makes_one_item_per_utterance(server: ServerProcess, compat_python: Path,
                                                               tmp_path: Path, rng: np.random.Generator):
    said = sequences(rng, 2)
    wav = tone_wav(tmp_path / "speech.wav", said, 24000, silence_s=1.5)
    result = run_client(compat_python, "openai_realtime.py", server.port, wav, "--turn", "server_vad",
                        "--silence-ms", 500, "--items", 2)
    assert [c["transcript"] for c in result["completed"]] == [s.text for s in said]
    for completed in result["completed"]:
        assert result["deltas"][completed["item_id"]] == completed["transcript"]
    types = [e["type"] for e in result["events"]]
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                 "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"):
        assert types.count(kind) == 2, (kind, types)
    assert types.index("input_audio_buffer.speech_started") < types.index("input_audio_buffer.speech_stopped")


# ---------------------------------------------------------------------- Deepgram
def test_deepgram_sdk_interim_final_finalize_and_close_stream(server: ServerProcess, compat_python: Path,
                                                              tmp_path: Path, rng: np.random.Generator):
    said = sequences(rng, 2)
    wav = tone_wav(tmp_path / "speech.wav", said, 16000, silence_s=0.3)
    first_frames = int(len(said[0].audio) / tones.SAMPLE_RATE * 10) + 3  # 100 ms frames: the first and its pause
    result = run_client(compat_python, "deepgram_listen.py", server.port, wav, "--finalize-after", first_frames)
    messages = result["messages"]
    kinds = [m.get("type") for m in messages]
    assert kinds[-1] == "Metadata", kinds
    metadata = messages[-1]
    assert metadata["channels"] == 1 and metadata["duration"] == pytest.approx(sf.info(wav).duration, abs=0.05)
    results = [m for m in messages if m.get("type") == "Results"]
    interim = [r for r in results if not r["is_final"]]
    finals = [r for r in results if r["is_final"]]
    assert interim, "interim_results=true gives interim Results"
    # Every final's text, in order, is every letter sent: none lost, none twice.
    heard = " ".join(t for r in finals if (t := r["channel"]["alternatives"][0]["transcript"]))
    assert heard == " ".join(s.text for s in said)
    assert [r["from_finalize"] for r in finals].count(True) == 1
    for r in finals:
        alternative = r["channel"]["alternatives"][0]
        words = alternative["words"]
        assert " ".join(w["word"] for w in words) == alternative["transcript"]
        assert all(0 < w["confidence"] <= 1 and w["start"] < w["end"] for w in words)
        if words:
            assert 0 < alternative["confidence"] <= 1
            assert r["start"] <= words[0]["start"] and words[-1]["end"] <= r["start"] + r["duration"] + 1e-6
