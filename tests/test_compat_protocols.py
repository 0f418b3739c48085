"""Other servers' clients, unchanged, against a real ``streamd serve`` (the tone model).

Each client is that project's own package (OpenAI's ``openai``, Deepgram's ``deepgram-sdk``, ...),
run from a venv of its own (``compat_python``) by the scripts in tests/compat_clients/, which
print what the client parsed as JSON. Every expected transcript is the letters the test's tone
audio spells.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import ROOT, log_records
from test_server import stream, tone_pcm
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from streamd.models import tones
from streamd.serverproc import ServerProcess, free_port, start_server

CLIENTS = ROOT / "tests" / "compat_clients"


@pytest.fixture(scope="module")
def protocol_ports() -> dict[str, int]:
    """The serve keys of the protocols on ports of their own, each a free port."""
    return {key: free_port() for key in ("whisperlive_port", "vosk_port", "sherpa_port")}


@pytest.fixture(scope="module")
def server(tone_model_path: Path, tmp_path_factory: pytest.TempPathFactory, protocol_ports: dict[str, int]):
    started = start_server(tone_model_path, tmp_path_factory.mktemp("server") / "server.log", threads=1,
                           max_sessions=32, idle_timeout_s=20, **protocol_ports)
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


# ---------------------------------------------------------------------- protocols on ports of their own
def raw_session(port: int, frames: list[str | bytes]) -> tuple[list[Any], int | None, str | None]:
    """Sends ``frames`` (as far as the server lets it), then reads until the server closes: the
    messages (JSON parsed where they are JSON), the close code and the close reason."""
    with connect(f"ws://127.0.0.1:{port}") as socket:
        with contextlib.suppress(ConnectionClosed):  # the server may close before the last frames
            for frame in frames:
                socket.send(frame)
        messages: list[Any] = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = socket.recv(timeout=30)
                messages.append(json.loads(message) if message.startswith("{") else message)
        return messages, socket.close_code, socket.close_reason


def float32(sequence: tones.ToneSequence) -> bytes:
    return sequence.audio.astype("<f4").tobytes()


def pcm16(sequence: tones.ToneSequence) -> bytes:
    return (np.clip(sequence.audio, -1, 1) * 32767).astype("<i2").tobytes()


NAN_SAMPLE = np.array([np.nan], "<f4").tobytes()


# ---------------------------------------------------------------------- WhisperLive
def test_whisperlive_client_keeps_completed_segments_of_the_letters(server: ServerProcess, compat_python: Path,
                                                                    protocol_ports: dict[str, int], tmp_path: Path,
                                                                    rng: np.random.Generator):
    said = sequences(rng, 2)
    wav = tone_wav(tmp_path / "speech.wav", said, 16000, silence_s=1.5)
    result = run_client(compat_python, "whisperlive_client.py", protocol_ports["whisperlive_port"], wav,
                        "--word-timestamps")
    assert result["ready"] and result["backend"] == "faster_whisper" and result["statuses"] == []
    transcript = result["transcript"]  # what the client kept: completed segments only
    assert [segment["text"] for segment in transcript] == [s.text for s in said]
    times = [(float(segment["start"]), float(segment["end"])) for segment in transcript]
    assert all(isinstance(segment["start"], str) and start < end for segment, (start, end) in zip(transcript, times))
    assert times[0][1] <= times[1][0]
    for segment, (start, end) in zip(transcript, times):
        assert " ".join(w["word"] for w in segment["words"]) == segment["text"]
        assert all(start <= w["start"] < w["end"] <= end and 0 < w["probability"] <= 1 for w in segment["words"])
    # While an utterance is spoken its text so far is the last segment, not completed.
    speaking = [s[-1] for s in result["segment_lists"] if not s[-1]["completed"]]
    assert speaking and all(said[0].text.startswith(s["text"]) or said[1].text.startswith(s["text"])
                            for s in speaking)


@pytest.mark.parametrize("limit", ["max_sessions", "max_sessions_per_ip"])
def test_whisperlive_client_without_room_hears_wait(tone_model_path: Path, compat_python: Path, tmp_path: Path,
                                                    rng: np.random.Generator, limit: str):
    """The server full, or this address at its limit: WhisperLive's clients hear WAIT, not an HTTP status."""
    wav = tone_wav(tmp_path / "speech.wav", sequences(rng, 1), 16000)
    ports = {"whisperlive_port": free_port(), "vosk_port": free_port()}
    limits = {"max_sessions": 1} if limit == "max_sessions" else {"max_sessions": 4, "max_sessions_per_ip": 1}
    server = start_server(tone_model_path, tmp_path / "server.log", threads=1, **limits, **ports)
    try:
        with connect(server.url):  # its one slot, taken on the main port: one admission count for all ports
            result = run_client(compat_python, "whisperlive_client.py", ports["whisperlive_port"], wav)
            with pytest.raises(InvalidStatus) as refused, connect(f"ws://127.0.0.1:{ports['vosk_port']}"):
                pass  # vosk's clients get the HTTP status before the upgrade
    finally:
        assert server.stop() == 0, server.log_tail()
    assert not result["ready"] and result["transcript"] == []
    [wait] = result["statuses"]
    assert wait["status"] == "WAIT" and isinstance(wait["uid"], str) and wait["message"] > 0  # minutes
    assert refused.value.response.status_code == (503 if limit == "max_sessions" else 429)
    refusals = [r for r in log_records(server.log_tail(100_000)) if r["event"] == "connection refused"]
    # one for each client: WhisperLive's, then vosk's
    assert [r["reason"] for r in refusals] == 2 * ["full" if limit == "max_sessions" else "too_many_sessions"]


@pytest.mark.parametrize("frames, close_code, uid", [
    ([b"\x00" * 8], 4002, None),  # audio before the options
    (['{"uid": "u1", "task": "translate"}'], 4001, "u1"),
    (['{"uid": "u1"}', NAN_SAMPLE], 4003, "u1"),
])
def test_whisperlive_malformed_input_gets_status_error(server: ServerProcess, protocol_ports: dict[str, int],
                                                       frames: list[str | bytes], close_code: int, uid: str | None):
    messages, code, _ = raw_session(protocol_ports["whisperlive_port"], frames)
    error = messages[-1]
    assert (error["uid"], error["status"], code) == (uid, "ERROR", close_code) and error["message"]


def test_whisperlive_audio_before_a_mistake_gets_its_segment(server: ServerProcess, protocol_ports: dict[str, int],
                                                             rng: np.random.Generator):
    [sequence] = sequences(rng, 1)
    messages, code, _ = raw_session(protocol_ports["whisperlive_port"],
                                    ['{"uid": "u1"}', float32(sequence), "END_OF_AUDIO"])  # text, not binary
    *segments, error = messages
    assert segments[0]["message"] == "SERVER_READY"
    completed = [s["text"] for s in segments[-1]["segments"] if s["completed"]]
    assert completed == [sequence.text]
    assert (error["status"], code) == ("ERROR", 4000)


# ---------------------------------------------------------------------- vosk
def result_texts(exchanges: list[dict[str, Any]]) -> list[str]:
    """The texts of every result reply (not partials), in order, empty ones left out."""
    return [e["reply"]["text"] for e in exchanges if "text" in e["reply"] and e["reply"]["text"]]


def test_vosk_lockstep_client_replies_once_per_message_with_the_letters(server: ServerProcess, compat_python: Path,
                                                                        protocol_ports: dict[str, int], tmp_path: Path,
                                                                        rng: np.random.Generator):
    said = sequences(rng, 2)
    wav = tone_wav(tmp_path / "speech.wav", said, 16000, silence_s=1.5)
    # 4x real time with streamd's 160 ms chunk: the endpoint's result comes in a reply to audio.
    result = run_client(compat_python, "vosk_client.py", protocol_ports["vosk_port"], wav, "--speed", 4,
                        "--chunk-ms", 160, "--reset-after", 4)
    exchanges = result["exchanges"]  # the client checked: one reply per message, then the close
    assert result["close_code"] == 1000
    assert [e["sent"] for e in exchanges].count("reset") == 1 and exchanges[-1]["sent"] == "eof"
    assert " ".join(result_texts(exchanges)) == " ".join(s.text for s in said)
    audio_replies = [e["reply"] for e in exchanges if e["sent"] == "audio"]
    assert any(reply.get("partial") for reply in audio_replies)
    assert any("result" in reply for reply in audio_replies)  # an endpoint, answered in lockstep
    assert "text" in next(e["reply"] for e in exchanges if e["sent"] == "reset")  # a final result
    for reply in (e["reply"] for e in exchanges if "result" in e["reply"]):
        assert " ".join(w["word"] for w in reply["result"]) == reply["text"]
        assert all(0 < w["conf"] <= 1 and w["start"] < w["end"] for w in reply["result"])


def test_vosk_without_config_is_8000_hz(server: ServerProcess, compat_python: Path, protocol_ports: dict[str, int],
                                        tmp_path: Path, rng: np.random.Generator):
    said = sequences(rng, 1)
    wav = tone_wav(tmp_path / "speech.wav", said, 8000, silence_s=0.3)
    result = run_client(compat_python, "vosk_client.py", protocol_ports["vosk_port"], wav, "--no-config")
    assert result_texts(result["exchanges"]) == [said[0].text]


def test_vosk_mistake_after_audio_is_answered_with_the_final_result(server: ServerProcess,
                                                                    protocol_ports: dict[str, int],
                                                                    rng: np.random.Generator):
    [sequence] = sequences(rng, 1)
    config = '{"config": {"sample_rate": 16000}}'
    messages, code, reason = raw_session(protocol_ports["vosk_port"], [config, pcm16(sequence), "eof"])
    assert [set(m) for m in messages] == [{"partial"}, {"result", "text"}]  # one reply per message
    assert messages[1]["text"] == sequence.text
    assert code == 4000 and reason.startswith("bad_message: ")


@pytest.mark.parametrize("frames, close_code", [
    ([b"\x00" * 3], 4003),  # half a sample
    (['{"config": {"sample_rate": 100}}'], 4001),
    ([b"\x00\x00", '{"config": {"sample_rate": 16000}}'], 4001),  # config after audio
])
def test_vosk_malformed_input_closes_with_a_reason(server: ServerProcess, protocol_ports: dict[str, int],
                                                   frames: list[str | bytes], close_code: int):
    _, code, reason = raw_session(protocol_ports["vosk_port"], frames)
    assert code == close_code and reason


# ---------------------------------------------------------------------- sherpa-onnx
def test_sherpa_onnx_websocket_client_gets_the_letters(server: ServerProcess, compat_python: Path,
                                                       protocol_ports: dict[str, int], tmp_path: Path,
                                                       rng: np.random.Generator):
    said = sequences(rng, 2)
    wav = tone_wav(tmp_path / "speech.wav", said, 16000, silence_s=1.5)
    result = run_client(compat_python, "sherpa_onnx_client.py", protocol_ports["sherpa_port"], wav)
    assert result["returncode"] == 0, result["log"]  # it exits on Done!
    results = result["results"]
    finals = [r for r in results if r["is_final"]]
    assert [r["text"] for r in finals if r["text"]] == [s.text for s in said]
    assert [r["is_eof"] for r in finals].count(True) == 1 and results[-1]["is_eof"]
    assert any(not r["is_final"] and r["text"] for r in results)  # interim results
    segments = [r["segment"] for r in results]
    assert segments == sorted(segments)
    for r in finals:
        assert r["tokens"] == r["text"].split() and len(r["timestamps"]) == len(r["ys_probs"]) == len(r["tokens"])
        assert all(t >= 0 for t in r["timestamps"]) and all(-20 < p <= 0 for p in r["ys_probs"])


def test_sherpa_mistake_after_audio_gets_the_final_result_then_a_close(server: ServerProcess,
                                                                       protocol_ports: dict[str, int],
                                                                       rng: np.random.Generator):
    [sequence] = sequences(rng, 1)
    messages, code, reason = raw_session(protocol_ports["sherpa_port"], [float32(sequence), "done"])
    finals = [m for m in messages if m["is_final"]]
    assert [m["text"] for m in finals if m["text"]] == [sequence.text] and finals[-1]["is_eof"]
    assert "Done!" not in messages and code == 4000 and reason.startswith("bad_message: ")


@pytest.mark.parametrize("frame", [NAN_SAMPLE, b"\x00" * 6])
def test_sherpa_bad_audio_closes_with_a_reason(server: ServerProcess, protocol_ports: dict[str, int], frame: bytes):
    _, code, reason = raw_session(protocol_ports["sherpa_port"], [frame])
    assert code == 4003 and reason.startswith("bad_audio: ")


# ---------------------------------------------------------------------- every protocol at once
def without_runs(rng: np.random.Generator, count: int) -> list[tones.ToneSequence]:
    """``count`` sequences of 3-5 letters in which no letter follows itself (the tone model's one
    known weakness is a run of one tone: not what this test is about)."""
    return [tones.synthesize(tones.letters_without_runs(rng, int(rng.integers(3, 6))), rng) for _ in range(count)]


def heard(protocol: str, result: dict[str, Any]) -> str:
    """The transcript a client of ``protocol`` ended with, from its script's JSON."""
    if protocol == "openai":
        return " ".join(c["transcript"] for c in result["completed"])
    if protocol == "deepgram":
        finals = [m for m in result["messages"] if m.get("type") == "Results" and m["is_final"]]
        return " ".join(t for m in finals if (t := m["channel"]["alternatives"][0]["transcript"]))
    if protocol == "whisperlive":
        return " ".join(segment["text"] for segment in result["transcript"])
    if protocol == "vosk":
        return " ".join(result_texts(result["exchanges"]))
    return " ".join(r["text"] for r in result["results"] if r["is_final"] and r["text"])  # sherpa-onnx


def test_eighteen_sessions_three_of_each_protocol_at_once_all_right(server: ServerProcess, compat_python: Path,
                                                                    protocol_ports: dict[str, int], tmp_path: Path,
                                                                    rng: np.random.Generator):
    clients = {  # protocol -> (script, its arguments besides the WAV, the WAV's rate)
        "openai": ("openai_realtime.py", [server.port], 24000),
        "deepgram": ("deepgram_listen.py", [server.port], 16000),
        "whisperlive": ("whisperlive_client.py", [protocol_ports["whisperlive_port"]], 16000),
        "vosk": ("vosk_client.py", [protocol_ports["vosk_port"], "--speed", 2], 16000),
        "sherpa": ("sherpa_onnx_client.py", [protocol_ports["sherpa_port"]], 16000),
    }
    said = without_runs(rng, 18)
    jobs = [(protocol, said[3 * i + k]) for i, protocol in enumerate([*clients, "native"]) for k in range(3)]

    def run(index: int, protocol: str, sequence: tones.ToneSequence) -> str:
        if protocol == "native":
            return asyncio.run(stream(server.url, tone_pcm(sequence), 560)).text
        script, arguments, rate = clients[protocol]
        wav = tone_wav(tmp_path / f"{index}.wav", [sequence], rate)
        port, *options = arguments
        return heard(protocol, run_client(compat_python, script, port, wav, *options))

    with ThreadPoolExecutor(len(jobs)) as pool:
        transcripts = list(pool.map(run, range(len(jobs)), *zip(*jobs)))
    assert transcripts == [sequence.text for _, sequence in jobs]
    server.wait_idle()
    closed = [r for r in log_records(server.log_tail(10_000_000)) if r["event"] == "session closed"]
    assert {p: sum(r["protocol"] == p for r in closed[-18:]) for p, _ in jobs} == dict.fromkeys(dict(jobs), 3)
