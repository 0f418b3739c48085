"""End to end, like tests/test_server.py (whose helpers and tight-limit ``server`` fixture this
module shares): session options over the wire (``partials``, ``word_timestamps``, endpointing),
``finalize`` before ``config``, and what draining does — ``/readyz`` and upgrades answered 503,
sessions still waiting for a config, and the ``shutdown_timeout_s`` cut-off (docs/protocol.md,
docs/server.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_server
from conftest import log_records
from test_server import Messages, assert_complete, converse, letters_sequence, stream, tone_pcm
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clients.common import SessionResult, run_session
from streamd.models import tones
from streamd.server.protocols import native as protocol
from streamd.serverproc import ServerProcess, start_server

server = test_server.server  # the module-scoped fixture: a server with test_server's LIMITS for this module


# ---------------------------------------------------------------------- session options
def test_partials_and_word_timestamps_off_leave_them_out(server: ServerProcess, rng: np.random.Generator):
    (sequence,) = letters_sequence(rng, 1, (5, 5))
    pcm = tone_pcm(sequence)
    off = {"partials": False, "word_timestamps": False}

    async def both() -> tuple[SessionResult, SessionResult]:
        return await asyncio.gather(  # the same audio, with the defaults and with both off
            stream(server.url, pcm, 160),
            run_session(server.url, pcm.config() | {"chunk_ms": 160} | off, pcm.replay(80, realtime=False)))

    default, quiet = asyncio.run(both())
    for result in (default, quiet):
        assert_complete(result, sequence)
    assert {key: quiet.ready["config"][key] for key in off} == off
    # 160 ms chunks over ~2 s of five letters: the default session hears them grow
    assert default.partials and not quiet.partials
    assert [w["word"] for f in default.finals for w in f["words"]] == list(sequence.letters)
    assert all("words" not in final for final in quiet.finals)


def test_endpointing_ends_an_utterance_at_silence_and_the_stream_goes_on(server: ServerProcess,
                                                                        rng: np.random.Generator):
    first, second = letters_sequence(rng, 2, (2, 3), gap_s=(0.05, 0.1))
    pause = np.zeros(tones.SAMPLE_RATE, np.float32)  # 1 s of silence, over twice silence_ms
    spoken = tones.ToneSequence(np.concatenate([first.audio, pause, second.audio]), first.letters + second.letters)
    pcm = tone_pcm(spoken)
    endpointing = {"enabled": True, "silence_ms": 400}
    # All audio at once and eof at the end: only the server's endpointing can split it.
    received: Messages = []
    result = asyncio.run(run_session(server.url, pcm.config() | {"chunk_ms": 160, "endpointing": endpointing},
                                     pcm.replay(80, realtime=False), on_message=received.append))
    assert result.ready["config"]["endpointing"] == endpointing
    assert [(f["utterance"], f["text"], f["reason"]) for f in result.finals] == [
        (0, first.text, "endpoint"), (1, second.text, "eof")]
    assert result.finals[0]["end"] <= result.finals[1]["start"]
    assert result.done is not None and result.done["utterances"] == 2 and result.close_code == 1000
    after = received[received.index(result.finals[0]):]
    assert all(m["utterance"] == 1 for m in after if m["type"] == "partial")


def test_finalize_before_config_is_refused_like_audio(server: ServerProcess):
    messages, close_code = asyncio.run(converse(server.url, protocol.finalize()))
    assert [(m["type"], m["code"]) for m in messages] == [("error", "audio_before_config")]
    assert close_code == 4002


# ---------------------------------------------------------------------- draining
# Below websockets' close timeout (its default 10 s, which streamd keeps): a session stuck in its close
# handshake then ends by the cut-off, not by websockets giving up on the client.
SHUTDOWN_TIMEOUT_S = 5


async def logged(server: ServerProcess, event: str, timeout_s: float = 60) -> None:
    """Until the server's log holds ``event``."""
    async def poll() -> None:
        while event not in {r["event"] for r in log_records(server.log_tail(1_000_000))}:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)


def get_on(sock: socket.socket, path: str) -> tuple[int, dict[str, Any]]:
    """``GET path`` on a connection opened earlier: status and JSON body."""
    connection = http.client.HTTPConnection("127.0.0.1", sock.getpeername()[1], timeout=30)
    connection.sock = sock
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


async def read_to_close(ws: ClientConnection) -> tuple[Messages, int | None]:
    messages: Messages = []

    async def read() -> None:
        async for text in ws:
            messages.append(json.loads(text))

    with contextlib.suppress(ConnectionClosed):
        await asyncio.wait_for(read(), 60)
    return messages, ws.close_code


def test_draining_refuses_probes_and_upgrades_and_cuts_off_sessions_past_shutdown_timeout_s(
        tone_model_path: Path, tmp_path: Path):
    server = start_server(tone_model_path, tmp_path / "server.log", shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)

    async def scenario() -> tuple[str, tuple[int, dict[str, Any]], InvalidStatus, tuple[Messages, int | None]]:
        waiting = await connect(server.url)  # admitted, no config yet
        stalled = await connect(server.url)
        await stalled.send(protocol.config())
        ready = json.loads(await stalled.recv())
        # It reads nothing more, so it never answers the server's close: its session cannot finish.
        stalled.transport.pause_reading()
        # The listening socket closes at SIGTERM: connections accepted before it are the ones
        # that can ask a draining server anything.
        probe, upgrade = (socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(2))
        server.process.send_signal(signal.SIGTERM)
        await logged(server, "shutting down")
        readyz = await asyncio.to_thread(get_on, probe, "/readyz")
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.url, sock=upgrade)
        waited = await read_to_close(waiting)
        assert await asyncio.to_thread(server.process.wait, 60) == 0, server.log_tail()
        stalled.transport.abort()
        return ready["session_id"], readyz, refused.value, waited

    try:
        stalled_id, (status, body), refused, (messages, close_code) = asyncio.run(scenario())
    finally:
        server.stop()
    assert (status, body["status"]) == (503, "draining")
    assert refused.response.status_code == 503 and refused.response.headers["Retry-After"] == "1"
    assert json.loads(refused.response.body)["status"] == "draining"
    # the session waiting for its config: the error and close 1001 only
    assert [(m["type"], m["code"]) for m in messages] == [("error", "shutting_down")] and close_code == 1001
    records = log_records(server.log_tail(1_000_000))
    assert "sessions outlived shutdown_timeout_s; cancelling" in {r["event"] for r in records}
    outcomes = {r["session_id"]: r["outcome"] for r in records if r["event"] == "session closed"}
    assert outcomes.pop(stalled_id) == "cancelled"
    assert list(outcomes.values()) == ["shutting_down"]


def test_serve_with_no_model_serves_the_one_shipped_with_streamd(tmp_path: Path, rng: np.random.Generator):
    from streamd.models.bundled import default_model_path

    server = start_server(None, tmp_path / "server.log", threads=1)
    try:
        sequence = letters_sequence(rng, 1)[0]
        assert_complete(asyncio.run(stream(server.url, tone_pcm(sequence), 560)), sequence)
        [loaded] = [r for r in log_records(server.log_tail(1_000_000)) if r["event"] == "model loaded"]
        assert loaded["model"] == str(default_model_path())
    finally:
        assert server.stop() == 0, server.log_tail()
