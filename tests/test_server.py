"""End to end: a real ``streamd serve`` subprocess, real WebSocket clients, the tone model.

Every expected transcript is the letter sequence the test synthesized; protocol behaviour is
checked against docs/protocol.md (error codes, close codes, reasons, HTTP answers). One server
with tight limits serves the module; the SIGTERM test starts its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import ROOT, log_records
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clients.common import Pcm, SessionResult, run_session
from streamd.models import tones
from streamd.server.protocols import native as protocol
from streamd.serverproc import ServerProcess, ServerStartError, start_server, stat_fields

CHUNKS_MS = (80, 160, 560, 1120)
# Every stream in this module but the max_session test's is shorter than max_session_s. The tone
# model knows gaps of at most 0.3 s (it may hear letters in longer silences): audio stays like that.
# Every client here is this machine, one address: no per-address limit (test_security.py tests it).
LIMITS = {"max_sessions": 24, "idle_timeout_s": 3, "max_session_s": 3.5, "max_message_bytes": 65536,
          "max_sessions_per_ip": 0}


# ---------------------------------------------------------------------- the server process
@pytest.fixture(scope="module")
def server(tone_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    started = start_server(tone_model_path, tmp_path_factory.mktemp("server") / "server.log", **LIMITS)
    yield started
    assert started.stop() == 0, started.log_tail()


# ---------------------------------------------------------------------- audio and clients
def tone_pcm(sequence: tones.ToneSequence, rate: int = 16000, encoding: str = "pcm_s16le",
             channels: int = 1) -> Pcm:
    """The tone audio as a client at ``rate`` would capture it (soxr-resampled, channels copied)."""
    audio = sequence.audio
    if rate != tones.SAMPLE_RATE:
        audio = soxr.resample(audio, tones.SAMPLE_RATE, rate)
    return Pcm.from_array(np.repeat(audio[:, None], channels, axis=1), rate, encoding)


def letters_sequence(rng: np.random.Generator, count: int, letters: tuple[int, int] = (2, 5),
                     **timing: tuple[float, float]) -> list[tones.ToneSequence]:
    """``count`` different sequences of ``letters`` letters (at most 3.3 s with default timing)."""
    seen: dict[str, tones.ToneSequence] = {}
    while len(seen) < count:
        text = tones.random_letters(rng, *letters)
        seen.setdefault(text, tones.synthesize(text, rng, **timing))
    return list(seen.values())


def tone_spans(audio: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of each tone, from the signal envelope (tones are 0.3, noise 0.003)."""
    loud = np.convolve(np.abs(audio) > 0.05, np.ones(80), "same") > 0  # bridges zero crossings
    edges = np.flatnonzero(np.diff(loud.astype(np.int8)))
    return [(start / tones.SAMPLE_RATE, end / tones.SAMPLE_RATE) for start, end in edges.reshape(-1, 2)]


async def paced(pcm: Pcm, frame_ms: float, speed: float) -> AsyncIterator[tuple[bytes, float]]:
    """Frames at ``speed`` times real time (keeps a stream open while other clients act)."""
    for chunk in pcm.chunks(frame_ms):
        seconds = len(chunk) / pcm.frame_bytes / pcm.sample_rate
        await asyncio.sleep(seconds / speed)
        yield chunk, seconds


async def stream(url: str, pcm: Pcm, chunk_ms: int, speed: float | None = None) -> SessionResult:
    frames = pcm.replay(80, realtime=False) if speed is None else paced(pcm, 80, speed)
    return await run_session(url, pcm.config() | {"chunk_ms": chunk_ms}, frames)


Messages = list[dict[str, Any]]


async def converse(url: str, *outgoing: str | bytes, read_s: float = 60, **options: Any
                   ) -> tuple[Messages, int | None]:
    """Send raw frames, then read until the server closes: (messages, close code received).
    ``options`` go to ``websockets``' ``connect`` (headers, origin, TLS, local address)."""
    messages: list[dict[str, Any]] = []
    async with connect(url, max_size=None, **options) as ws:
        try:
            for frame in outgoing:
                await ws.send(frame)
        except ConnectionClosed:
            pass  # the server closed early; what it said is still readable

        async def read() -> None:
            async for text in ws:
                messages.append(json.loads(text))

        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(read(), read_s)
    return messages, ws.close_code


def assert_complete(result: SessionResult, sequence: tones.ToneSequence) -> None:
    assert result.text == sequence.text, f"expected {sequence.text!r}, got {result.text!r}"
    assert [f["reason"] for f in result.finals][-1] == "eof"
    assert result.done is not None and result.done["utterances"] == len(result.finals)
    assert result.close_code == 1000


# ---------------------------------------------------------------------- HTTP
def test_probes_answer_json(server: ServerProcess):
    assert server.get("/healthz")[0::2] == (200, {"status": "ok"})
    status, headers, body = server.get("/readyz")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body["status"] == "ready" and body["max_sessions"] == LIMITS["max_sessions"]


def test_sigusr1_dumps_every_threads_stack_to_the_log_and_the_server_carries_on(server: ServerProcess):
    before = server.log_path.read_text().count("most recent call first")
    server.process.send_signal(signal.SIGUSR1)
    for _ in range(50):
        text = server.log_path.read_text()
        if text.count("most recent call first") > before:
            break
        time.sleep(0.1)
    starts = [m.start() for m in re.finditer("most recent call first", text)]
    dump = text[text.rfind("\n", 0, starts[before]):]  # this signal's dump: every thread
    assert "_worker" in dump, "the engine thread's stack"
    assert "run_forever" in dump[dump.find("Current thread"):], "the event loop's stack"
    assert server.get("/readyz")[0] == 200


def test_compression_offered_by_a_client_is_declined(server: ServerProcess):
    async def extensions() -> tuple[str | None, str | None]:
        async with connect(server.url) as ws:  # websockets offers permessage-deflate by default
            return ws.request.headers.get("Sec-WebSocket-Extensions"), ws.response.headers.get(
                "Sec-WebSocket-Extensions")

    offered, accepted = asyncio.run(extensions())
    assert offered is not None and "permessage-deflate" in offered
    assert accepted is None


def test_upgrade_beyond_max_sessions_gets_503_with_retry_after(server: ServerProcess):
    server.wait_idle()

    async def scenario() -> InvalidStatus:
        held = [await connect(server.url) for _ in range(LIMITS["max_sessions"])]
        try:
            status, _, body = server.get("/readyz")
            assert (status, body["status"], body["sessions"]) == (503, "full", LIMITS["max_sessions"])
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.url)
            return refused.value
        finally:
            for ws in held:
                await ws.close()

    refused = asyncio.run(scenario())
    assert refused.response.status_code == 503
    assert refused.response.headers["Retry-After"] == "1"
    assert json.loads(refused.response.body)["status"] == "full"
    server.wait_idle()
    assert server.get("/readyz")[0] == 200


# ---------------------------------------------------------------------- transcripts
@pytest.fixture(scope="module")
def parity_files(tone_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two 16 kHz WAVs and, per chunk size, what ``streamd transcribe --mode streaming`` makes of them.

    The four transcribe runs start together (each pays the NeMo import) and run while tests go on.
    """
    folder = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(20240611)
    sequences = {folder / f"tones{i}.wav": seq for i, seq in enumerate(letters_sequence(rng, 2))}
    for path, sequence in sequences.items():
        sf.write(path, sequence.audio, tones.SAMPLE_RATE, subtype="PCM_16")
    runs = {
        chunk: subprocess.Popen(
            [sys.executable, "-m", "streamd", "--log-format", "json", "transcribe", *map(str, sequences),
             "--model", str(tone_model_path), "--mode", "streaming", "--att-context-size", str(chunk),
             "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env=os.environ | {"OMP_NUM_THREADS": "1"})  # four at once: spinning thread pools would crawl
        for chunk in CHUNKS_MS
    }
    transcripts: dict[int, dict[str, dict[str, Any]]] = {}
    for chunk, run in runs.items():
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
        transcripts[chunk] = {line["file"]: line for line in map(json.loads, out.splitlines())}
    return sequences, transcripts


@pytest.mark.parametrize("chunk_ms", CHUNKS_MS)
def test_replay_client_equals_transcribe_and_the_tones(server: ServerProcess, parity_files, chunk_ms: int):
    sequences, transcripts = parity_files
    for path, sequence in sequences.items():
        replay = subprocess.run(
            [sys.executable, "-m", "clients.replay", server.url, str(path), "--fast", "--json",
             "--chunk-ms", str(chunk_ms)],
            capture_output=True, text=True, timeout=120, cwd=ROOT, check=True,
        )
        result = json.loads(replay.stdout)
        offline = transcripts[chunk_ms][str(path)]
        assert result["config"]["chunk_ms"] == chunk_ms
        assert result["text"] == sequence.text
        assert (result["text"], result["tokens"]) == (offline["text"], offline["tokens"])
        assert [f["reason"] for f in result["finals"]] == ["eof"]


def test_sixteen_concurrent_clients_get_their_own_sequences(server: ServerProcess, rng: np.random.Generator):
    formats = [(rate, encoding, channels) for rate in (8000, 16000, 44100, 48000)
               for encoding, channels in (("pcm_s16le", 1), ("f32le", 1), ("pcm_s16le", 2), ("f32le", 2))]
    sequences = letters_sequence(rng, len(formats))
    chunks = [CHUNKS_MS[i % len(CHUNKS_MS)] for i in range(len(formats))]
    pcms = [tone_pcm(seq, *fmt) for seq, fmt in zip(sequences, formats, strict=True)]

    async def all_at_once() -> list[SessionResult]:
        return await asyncio.gather(*(stream(server.url, pcm, chunk)
                                      for pcm, chunk in zip(pcms, chunks, strict=True)))

    results = asyncio.run(all_at_once())
    for result, sequence, pcm, chunk in zip(results, sequences, pcms, chunks, strict=True):
        assert result.ready["config"] | pcm.config() | {"chunk_ms": chunk} == result.ready["config"]
        assert_complete(result, sequence)


def test_finalize_ends_an_utterance_and_the_stream_goes_on(server: ServerProcess, rng: np.random.Generator):
    # long gaps in `first`: its last letter is decoded from its own trailing gap, before `second`
    (first,) = letters_sequence(rng, 1, (2, 2), gap_s=(0.25, 0.3))
    (second,) = letters_sequence(rng, 1, (2, 2))

    async def scenario() -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        async with connect(server.url) as ws:
            await ws.send(protocol.config(chunk_ms=80))
            messages.append(json.loads(await ws.recv()))
            for chunk in tone_pcm(first).chunks(80):
                await ws.send(chunk)
            while not (messages[-1]["type"] == "partial" and messages[-1]["text"] == first.text):
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            await ws.send(protocol.finalize())
            for chunk in tone_pcm(second).chunks(80):
                await ws.send(chunk)
            await ws.send(protocol.eof())
            messages += [json.loads(text) async for text in ws]
        return messages

    messages = asyncio.run(scenario())
    finals = [m for m in messages if m["type"] == "final"]
    assert [(f["utterance"], f["text"], f["reason"]) for f in finals] == [
        (0, first.text, "finalize"), (1, second.text, "eof")]
    assert messages[-1]["type"] == "done" and messages[-1]["utterances"] == 2
    assert all(p["utterance"] == 1 for p in messages[messages.index(finals[0]):] if p["type"] == "partial")


def test_final_word_times_lie_within_the_utterance(server: ServerProcess, rng: np.random.Generator):
    (sequence,) = letters_sequence(rng, 1, (5, 5))
    result = asyncio.run(stream(server.url, tone_pcm(sequence), 560))
    assert result.text == sequence.text
    (final,) = result.finals
    assert [w["word"] for w in final["words"]] == list(sequence.letters)
    for word in final["words"]:
        assert final["start"] <= word["start"] < word["end"] <= final["end"], (word, final["end"])


# ---------------------------------------------------------------------- bad clients
def test_bad_clients_leave_other_sessions_alone(server: ServerProcess, rng: np.random.Generator):
    good = letters_sequence(rng, 4)
    victim = tone_pcm(tones.synthesize("hgfedc", rng))

    async def disconnects_mid_stream() -> None:
        ws = await connect(server.url)
        await ws.send(protocol.config(chunk_ms=80))
        for chunk in victim.chunks(80)[: len(victim.chunks(80)) // 2]:
            await ws.send(chunk)
        await asyncio.sleep(0.3)
        ws.transport.abort()  # vanishes without a close frame

    async def never_sends_audio() -> list[dict[str, Any]]:
        return (await converse(server.url, protocol.config()))[0]

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            *(stream(server.url, tone_pcm(seq), CHUNKS_MS[i], speed=4.0) for i, seq in enumerate(good)),
            disconnects_mid_stream(),
            never_sends_audio(),
            converse(server.url, bytes(rng.integers(0, 256, 999, dtype=np.uint8))),
            converse(server.url, protocol.config(), bytes(rng.integers(0, 256, 4001, dtype=np.uint8))),
            converse(server.url, "\x00garbage{"),
        )

    *results, _, silent, before_config, odd_audio, not_json = asyncio.run(scenario())
    for result, sequence in zip(results, good, strict=True):
        assert_complete(result, sequence)
    assert silent[0]["type"] == "ready" and silent[-1]["code"] == "idle_timeout"
    assert [m["code"] for m in before_config[0]] == ["audio_before_config"]
    assert odd_audio[0][-1]["code"] == "bad_audio" and odd_audio[1] == 4003
    assert ([m["code"] for m in not_json[0]], not_json[1]) == (["bad_message"], 4000)
    server.wait_idle()
    assert server.get("/readyz")[0] == 200


# ---------------------------------------------------------------------- protocol errors
CONFIG = protocol.config()
F32 = protocol.config(encoding="f32le")
BIG = LIMITS["max_message_bytes"]


@pytest.mark.parametrize("frames, code, close_code", [
    pytest.param([protocol.config(bogus=1)], "bad_config", 4001, id="unknown-field"),
    pytest.param([protocol.config(sample_rate="16000")], "bad_config", 4001, id="wrong-type"),
    pytest.param([protocol.config(sample_rate=4000)], "bad_config", 4001, id="rate-out-of-range"),
    pytest.param([protocol.config(chunk_ms=100)], "bad_config", 4001, id="unsupported-chunk"),
    pytest.param([CONFIG, CONFIG], "bad_config", 4001, id="second-config"),
    pytest.param([b"\x00\x00" * 160], "audio_before_config", 4002, id="audio-before-config"),
    pytest.param([protocol.eof()], "audio_before_config", 4002, id="eof-before-config"),
    pytest.param([CONFIG, b"\x00" * 321], "bad_audio", 4003, id="odd-length-pcm16"),
    pytest.param([F32, np.array([0.1, np.nan], "<f4").tobytes()], "bad_audio", 4003, id="nan-audio"),
    pytest.param([protocol.config(encoding="f32le", channels=2), b"\x00" * 12], "bad_audio", 4003,
                 id="partial-stereo-frame"),
    pytest.param([CONFIG, '{"type": "pause"}'], "bad_message", 4000, id="unknown-type"),
    pytest.param([CONFIG, "[1, 2, 3]"], "bad_message", 4000, id="not-an-object"),
    pytest.param(['{"sample_rate": 16000}'], "bad_message", 4000, id="no-type"),
    pytest.param([CONFIG, b"\x00" * (BIG + 2)], "message_too_big", 1009, id="frame-over-max_message_bytes"),
    pytest.param([" " * (BIG + 1)], "message_too_big", 1009, id="text-over-max_message_bytes"),
    pytest.param([CONFIG], "idle_timeout", 4008, id="idle-timeout"),
])
def test_protocol_errors(server: ServerProcess, frames: list[str | bytes], code: str, close_code: int):
    messages, received_close = asyncio.run(converse(server.url, *frames))
    errors = [m for m in messages if m["type"] == "error"]
    assert [e["code"] for e in errors] == [code] and messages[-1] is errors[0]
    assert errors[0]["message"]
    assert received_close == close_code
    assert not [m for m in messages if m["type"] == "final"]  # no audio, so no final


def test_frames_far_over_the_limit_are_cut_off_by_the_websocket_layer(server: ServerProcess):
    messages, close_code = asyncio.run(converse(server.url, CONFIG, b"\x00" * (4 * BIG + 2)))
    assert {m["type"] for m in messages} <= {"ready"}  # the connection may fail before `ready` is out
    assert close_code == 1009
    assert server.get("/readyz")[0] == 200


@pytest.mark.parametrize("ending, code, close_code, reason", [
    pytest.param([b"\x01"], "bad_audio", 4003, "error", id="bad-audio"),
    pytest.param(['{"type": "nope"}'], "bad_message", 4000, "error", id="bad-message"),
    pytest.param([], "idle_timeout", 4008, "idle_timeout", id="idle-timeout"),
])
def test_an_error_after_audio_sends_the_final_first(server: ServerProcess, rng: np.random.Generator,
                                                    ending: list[str | bytes], code: str, close_code: int,
                                                    reason: str):
    sequence = letters_sequence(rng, 1)[0]
    pcm = tone_pcm(sequence, 48000, "f32le")
    messages, received_close = asyncio.run(converse(server.url, protocol.config(**pcm.config(), chunk_ms=160),
                                                    *pcm.chunks(100), *ending))
    *_, final, error = messages
    assert (final["type"], final["text"], final["reason"]) == ("final", sequence.text, reason)
    assert (error["type"], error["code"], received_close) == ("error", code, close_code)


def test_max_session_ends_the_stream_with_a_final(server: ServerProcess, rng: np.random.Generator):
    limit = LIMITS["max_session_s"]
    while True:  # a sequence longer than the limit, cut in a gap: the letters before it are complete
        sequence = tones.synthesize(tones.random_letters(rng, 7, 7), rng, tone_s=(0.25, 0.3), gap_s=(0.2, 0.3))
        spans = tone_spans(sequence.audio)
        before = [end for _, end in spans if end < limit]
        if len(spans) == 7 and before and before[-1] < limit - 0.1 and spans[len(before)][0] > limit + 0.03:
            break
    expected = " ".join(sequence.letters[: len(before)])
    messages, close_code = asyncio.run(converse(server.url, CONFIG, *tone_pcm(sequence).chunks(250)))
    *_, final, error = messages
    assert (final["text"], final["reason"]) == (expected, "max_session")
    assert final["end"] == pytest.approx(limit, abs=0.01)
    assert (error["code"], close_code) == ("max_session", 4009)


# ---------------------------------------------------------------------- a bug in the engine
# Run in the server process before the CLI: the engine raises where no client input is known to
# make it raise. internal_error exists for the bugs nobody has found yet: these stand in for one.
def server_code(patch: str) -> str:
    """Server code for ``start_server(python_args=("-c", ...))``: ``patch`` of the engine, then the CLI."""
    return f"""
import sys
from streamd.cli import main
from streamd.engine.engine import StreamingEngine
{patch}
sys.exit(main(sys.argv[1:]))
"""


# A command fault: audio holding a full-scale negative sample (tone audio never reaches it).
FAULTY_PUSH = server_code("""
push_audio = StreamingEngine.push_audio

def push_audio_or_fail(self, stream_id, samples):
    if (samples == -1.0).any():
        raise RuntimeError("injected engine fault")
    push_audio(self, stream_id, samples)

StreamingEngine.push_audio = push_audio_or_fail
""")


def batch_fault(condition: str) -> str:
    """Server code whose engine fails every model step of a batch (``group``) where ``condition``."""
    return server_code(f"""
run_group = StreamingEngine._run_group

def run_group_or_fail(self, size, drop, group, *args):
    if {condition}:
        raise RuntimeError("injected engine fault")
    run_group(self, size, drop, group, *args)

StreamingEngine._run_group = run_group_or_fail
""")


# Batches holding a stream without word timestamps (the warm-up and the good sessions keep the default).
FAULTY_BATCH = batch_fault("any(not stream.options.word_timestamps for stream in group)")
FULL_SCALE_FRAME = np.full(1280, -32768, "<i2").tobytes()  # 80 ms at the lowest pcm_s16le value


@pytest.mark.parametrize("code, poisoned, logged", [
    pytest.param(FAULTY_PUSH, True, "engine command failed", id="command"),
    pytest.param(FAULTY_BATCH, False, "model call failed for a stream alone; dropping it", id="batch"),
])
def test_an_engine_fault_ends_that_session_with_internal_error_1011_and_the_others_go_on(
        tone_model_path: Path, tmp_path: Path, rng: np.random.Generator, code: str, poisoned: bool, logged: str):
    server = start_server(tone_model_path, tmp_path / "server.log", python_args=("-c", code))
    good = letters_sequence(rng, 4)
    faulty = tone_pcm(tones.synthesize("abcdef", rng)).chunks(80)
    if poisoned:
        faulty.insert(10, FULL_SCALE_FRAME)

    async def scenario() -> list[Any]:
        return await asyncio.gather(  # good sessions at every chunk size (batched with the faulty one at 160)
            *(stream(server.url, tone_pcm(seq), chunk_ms, speed=4.0)
              for seq, chunk_ms in zip(good, (80, 160, 560, 1120))),
            converse(server.url, protocol.config(chunk_ms=160, word_timestamps=False), *faulty, protocol.eof()),
        )

    try:
        *results, (messages, close_code) = asyncio.run(scenario())
        for result, sequence in zip(results, good, strict=True):
            assert_complete(result, sequence)
        assert (messages[-1]["type"], messages[-1]["code"], close_code) == ("error", "internal_error", 1011)
        assert "done" not in [m["type"] for m in messages]
        server.wait_idle()
        assert server.get("/readyz")[0] == 200  # and the server serves on
        records = log_records(server.log_tail(100_000))
        assert [r["event"] for r in records].count(logged) == 1
        assert [r["outcome"] for r in records if r["event"] == "session closed"].count("internal_error") == 1
    finally:
        assert server.stop() == 0, server.log_tail()


def test_a_chunk_size_that_fails_its_warm_up_stops_the_server_with_the_reason(tone_model_path: Path, tmp_path: Path):
    with pytest.raises(ServerStartError, match="server exited with 1") as failure:
        start_server(tone_model_path, tmp_path / "server.log", python_args=("-c", batch_fault("size[1] == 6")))
    assert "startup failed" in str(failure.value) and "warm-up at att_context_size [70, 6] failed" in str(failure.value)


# A device that stops running work (a poisoned CUDA context, which this CPU cannot have): from the
# first batch holding a stream without word timestamps on, every model call fails and the engine's
# device check reports the device gone.
DEVICE_GONE = server_code("""
import streamd.engine.engine as engine_module
run_group = StreamingEngine._run_group
ERROR = "CUDA error: an illegal memory access was encountered (injected)"
gone = False

def run_group_or_fail(self, size, drop, group, *args):
    global gone
    gone = gone or any(not stream.options.word_timestamps for stream in group)
    if gone:
        raise RuntimeError(ERROR)
    run_group(self, size, drop, group, *args)

StreamingEngine._run_group = run_group_or_fail
engine_module.device_fault = lambda device: f"AcceleratorError: {ERROR}" if gone else None

from nemo.collections.asr.inference.utils.context_manager import CacheAwareContextManager
reset_slots = CacheAwareContextManager.reset_slots

def reset_slots_or_fail(self, *args):  # every device operation fails once the device is gone
    if gone:
        raise RuntimeError(ERROR)
    reset_slots(self, *args)

CacheAwareContextManager.reset_slots = reset_slots_or_fail
""")


def test_a_failed_device_ends_every_session_with_internal_error_and_the_server_exits_1(
        tone_model_path: Path, tmp_path: Path, rng: np.random.Generator):
    server = start_server(tone_model_path, tmp_path / "server.log", python_args=("-c", DEVICE_GONE))
    good, faulty = (tone_pcm(sequence).chunks(80) for sequence in letters_sequence(rng, 2, (5, 8)))

    async def scenario() -> list[tuple[Messages, int | None]]:
        return await asyncio.gather(
            converse(server.url, protocol.config(chunk_ms=160), *good, protocol.eof()),
            converse(server.url, protocol.config(chunk_ms=160, word_timestamps=False), *faulty, protocol.eof()))

    try:
        for messages, close_code in asyncio.run(scenario()):
            assert (messages[-1]["type"], messages[-1]["code"], close_code) == ("error", "internal_error", 1011)
        assert server.process.wait(60) == 1, server.log_tail()
        records = log_records(server.log_tail(100_000))
        stopping = [r for r in records if r["event"] == "device failed; stopping"]
        assert len(stopping) == 1 and "illegal memory access" in stopping[0]["reason"]
        assert [r["outcome"] for r in records if r["event"] == "session closed"] == ["internal_error"] * 2
    finally:
        if server.process.poll() is None:
            server.stop()


# What NeMo's NVRTC helper did on CUDA before the shim (patches/nemo_nvrtc.py): the warm-up's first
# decoder call writes a NUL into CPython's shared b" ".
WARM_UP_OVERWRITES_SPACE = server_code("""
import ctypes
run_group = StreamingEngine._run_group

def run_group_overwriting_space(self, *args):
    space = b" " * 1  # the shared object itself
    ctypes.memmove(ctypes.cast(ctypes.c_char_p(space), ctypes.c_void_p).value, b"\\0", 1)
    run_group(self, *args)

StreamingEngine._run_group = run_group_overwriting_space
""")


def test_a_warm_up_that_overwrites_a_shared_byte_object_stops_the_server_with_the_reason(tone_model_path: Path,
                                                                                        tmp_path: Path):
    with pytest.raises(ServerStartError, match="server exited with 1") as failure:
        start_server(tone_model_path, tmp_path / "server.log", python_args=("-c", WARM_UP_OVERWRITES_SPACE))
    assert "startup failed" in str(failure.value) and "shared one-byte objects {32: 0}" in str(failure.value)


def test_engine_load_is_logged_with_where_a_step_goes(tone_model_path: Path, tmp_path: Path,
                                                     rng: np.random.Generator):
    server = start_server(tone_model_path, tmp_path / "server.log", load_log_interval_s=0.2)
    try:
        sequence = letters_sequence(rng, 1, (6, 8))[0]
        assert_complete(asyncio.run(stream(server.url, tone_pcm(sequence), 160, speed=2.0)), sequence)
        loads = [r for r in log_records(server.log_tail(1_000_000)) if r["event"] == "engine load"]
        assert len(loads) >= 2  # the session ran for over a second
        for load in loads:
            assert load["steps"] > 0 and 0 < load["busy"] <= 1 and 0 < load["streams_per_step"] <= 1  # one session
            parts = load["features_ms"] + load["encoder_ms"] + load["decoder_ms"] + load["other_ms"]
            assert load["longest_step_ms"] >= load["step_ms"] > 0 and abs(parts - load["step_ms"]) <= 0.3
    finally:
        assert server.stop() == 0, server.log_tail()


def test_warm_up_batches_warmup_batch_streams_per_chunk_size(server: ServerProcess, tone_model_path: Path,
                                                            tmp_path: Path):
    def warmed_up(log: str) -> dict[str, Any]:
        return next(r for r in log_records(log) if r["event"] == "engine warmed up")

    assert warmed_up(server.log_tail(1_000_000))["largest_batch"] == 1  # CPU default: one stream at a time
    batched = start_server(tone_model_path, tmp_path / "server.log", warmup_batch=5, max_batch=4)
    try:
        record = warmed_up(batched.log_tail(1_000_000))
        assert record["largest_batch"] == 4  # capped at max_batch
        assert sorted(record["seconds"]) == ["[70, 0]", "[70, 13]", "[70, 1]", "[70, 6]"]
    finally:
        assert batched.stop() == 0, batched.log_tail()


# ---------------------------------------------------------------------- shutdown
async def open_streams_then(url: str, streams: list[tuple[tones.ToneSequence, int]], settle_s: float,
                            act: Callable[[], object]) -> list[tuple[Messages, int | None]]:
    """One session per (sequence, chunk_ms) sends its audio and no eof, so its stream stays open;
    once all have sent everything and ``settle_s`` passed (the server has read it), ``act()``;
    then each session's messages until the server closes it, and its close code."""

    async def session(sequence: tones.ToneSequence, chunk_ms: int, audio_sent: asyncio.Event
                      ) -> tuple[Messages, int | None]:
        async with connect(url) as ws:
            await ws.send(protocol.config(chunk_ms=chunk_ms))
            for chunk in tone_pcm(sequence).chunks(80):
                await ws.send(chunk)
            audio_sent.set()
            messages: Messages = []
            with contextlib.suppress(ConnectionClosed):  # a 1011 close ends the iteration with an error
                async for text in ws:
                    messages.append(json.loads(text))
        return messages, ws.close_code

    sent = [asyncio.Event() for _ in streams]
    tasks = [asyncio.create_task(session(seq, chunk_ms, event))
             for (seq, chunk_ms), event in zip(streams, sent, strict=True)]
    for event in sent:
        await event.wait()
    await asyncio.sleep(settle_s)
    act()
    return await asyncio.wait_for(asyncio.gather(*tasks), 90)


@pytest.mark.parametrize("engine_process", [False, True], ids=["engine-thread", "engine-process"])
def test_sigterm_sends_every_session_its_final_and_done(tone_model_path: Path, tmp_path: Path,
                                                       rng: np.random.Generator, engine_process: bool):
    server = start_server(tone_model_path, tmp_path / "server.log", engine_process=engine_process)
    engine_pid = None
    if engine_process:  # its SIGUSR1 dumps its own stacks (its loop waits on the pipe) and it carries on
        engine_pid = engine_process_pid(server)
        os.kill(engine_pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "in serve_worker" not in server.log_tail(100_000):
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)
    sequences = letters_sequence(rng, 4)

    try:
        outcomes = asyncio.run(open_streams_then(server.url, list(zip(sequences, CHUNKS_MS, strict=True)), 2.0,
                                                 lambda: server.process.send_signal(signal.SIGTERM)))
        assert server.process.wait(90) == 0, server.log_tail()
    finally:
        server.stop()
    for (messages, close_code), sequence in zip(outcomes, sequences, strict=True):
        finals = [m for m in messages if m["type"] == "final"]
        assert [(f["text"], f["reason"]) for f in finals] == [(sequence.text, "shutdown")]
        assert [m["type"] for m in messages[-2:]] == ["done", "error"]
        assert messages[-1]["code"] == "shutting_down" and close_code == 1001
    if engine_pid is not None:  # the server ended its engine process on the way out
        assert not running(engine_pid)


# ---------------------------------------------------------------------- the engine in its own process
def engine_process_pid(server: ServerProcess) -> int:
    """The engine process's pid, as the server logged it; checks it is the server's child."""
    pid = server.engine_pid()
    assert pid is not None and pid in server.pids()[1:], server.log_tail()
    return pid


def running(pid: int, wait_s: float = 15) -> bool:
    """Whether process ``pid`` still runs after up to ``wait_s`` (a zombie counts as ended)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = stat_fields(Path(f"/proc/{pid}/stat"))[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


def test_a_killed_engine_process_ends_every_session_with_internal_error_and_the_server_exits_1(
        tone_model_path: Path, tmp_path: Path, rng: np.random.Generator):
    """A crash in native code or the kernel's OOM killer takes the engine's process, not the
    server's: every session is told (1011), and the server exits 1 for its supervisor."""
    server = start_server(tone_model_path, tmp_path / "server.log", engine_process=True)
    engine_pid = engine_process_pid(server)
    sequences = letters_sequence(rng, 2)

    try:
        outcomes = asyncio.run(open_streams_then(server.url, [(seq, 160) for seq in sequences], 1.0,
                                                 lambda: os.kill(engine_pid, signal.SIGKILL)))
        assert server.process.wait(60) == 1, server.log_tail()
    finally:
        server.stop()
    for messages, close_code in outcomes:
        assert (messages[-1]["type"], messages[-1]["code"], close_code) == ("error", "internal_error", 1011)
    records = log_records(server.log_tail(100_000))
    stopping = [r for r in records if r["event"] == "device failed; stopping"]
    assert len(stopping) == 1 and "killed by SIGKILL" in stopping[0]["reason"], server.log_tail()
    assert [r["outcome"] for r in records if r["event"] == "session closed"] == ["internal_error"] * 2


def test_an_idle_server_whose_engine_process_died_exits_1(tone_model_path: Path, tmp_path: Path):
    """With no session to notice, the server still learns its engine is gone, rather than stay
    ready and fail every session that comes."""
    server = start_server(tone_model_path, tmp_path / "server.log", engine_process=True)
    try:
        os.kill(engine_process_pid(server), signal.SIGKILL)
        assert server.process.wait(30) == 1, server.log_tail()
    finally:
        server.stop()
    stopping = [r for r in log_records(server.log_tail(100_000)) if r["event"] == "device failed; stopping"]
    assert len(stopping) == 1 and "killed by SIGKILL" in stopping[0]["reason"], server.log_tail()


def test_the_engine_process_ends_when_the_server_is_killed(tone_model_path: Path, tmp_path: Path):
    """A server killed outright leaves no engine process behind holding the device's memory."""
    server = start_server(tone_model_path, tmp_path / "server.log", engine_process=True)
    engine_pid = engine_process_pid(server)
    server.process.kill()
    server.process.wait()
    assert not running(engine_pid)


def test_a_model_that_fails_to_load_in_the_engine_process_stops_the_server_with_the_reason(tmp_path: Path):
    not_a_model = tmp_path / "broken.nemo"
    not_a_model.write_bytes(b"not a tar archive")
    with pytest.raises(ServerStartError, match="server exited with 1") as failure:
        start_server(not_a_model, tmp_path / "server.log", engine_process=True)
    # The engine process's exception crossed the pipe: the same reason as with the engine on a thread.
    assert "startup failed" in str(failure.value) and f"ModelLoadError: cannot load {not_a_model}" in str(failure.value)


# ---------------------------------------------------------------------- latency client
def test_latency_client_writes_sane_reports(server: ServerProcess, tmp_path: Path, rng: np.random.Generator):
    # 1.9-3.3 s: with 160 ms chunks the first letters arrive long before eof
    (sequence,) = letters_sequence(rng, 1, (5, 5), tone_s=(0.2, 0.3), gap_s=(0.15, 0.3))
    path = tmp_path / "short.wav"
    sf.write(path, sequence.audio, tones.SAMPLE_RATE, subtype="PCM_16")
    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "clients.latency", server.url, str(path), "--chunk-ms", "160,560",
                    "--out", str(out)], check=True, timeout=180, cwd=ROOT, capture_output=True)
    report = json.loads((out / "latency.json").read_text())
    assert [c["chunk_ms"] for c in report["chunks"]] == [160, 560]
    for chunk in report["chunks"]:
        assert chunk["texts"] == [sequence.text]
        for key in ("first_partial_s", "final_s"):
            assert chunk[key]["p50"] is not None and chunk[key]["p50"] >= 0
        # causality in real time: the first partial cannot come before the audio it decoded was
        # sent (less the first 80 ms frame, sent at once)
        first_audio = chunk["first_partial_audio_s"]["p50"]
        assert 0 < first_audio <= report["audio_seconds"]
        assert chunk["first_partial_s"]["p50"] >= first_audio - 0.08
        update = chunk["update_s"]
        if chunk["updates"]:
            assert 0 <= update["p50"] <= update["p90"] <= update["p99"]
    assert report["chunks"][0]["updates"] >= 1  # 160 ms chunks report letters long before the end
    table = (out / "latency.md").read_text()
    assert "| 160 |" in table and "| 560 |" in table
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
