"""Abuse against a real ``streamd serve`` (docs/security.md): many sessions uploading as fast as
TCP allows, clients killed mid-utterance, SIGTERM under load. Each scenario is cut short (a
bounded wall time) so that the file stays a couple of minutes in CI; the long runs — the 30-minute
soak, a thousand fuzzed sessions — are benchmarks (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from conftest import ROOT, log_records
from test_security import closed_sessions, paced, session
from test_server import assert_complete, stream, tone_pcm, tone_spans

from streamd.bench.server import per_session_bound, upload_attack
from streamd.models import tones
from streamd.serverproc import ServerProcess, start_server


def sequences(rng: np.random.Generator, count: int, letters: int) -> list[tones.ToneSequence]:
    """``count`` tone sequences of ``letters`` letters, none next to itself (whole transcripts are
    asserted: a run of one tone is the tone model's known weakness, not what is tested here)."""
    return [tones.synthesize(tones.letters_without_runs(rng, letters), rng) for _ in range(count)]


# ---------------------------------------------------------------------- the upload attack
UPLOADERS = 64  # max_sessions' default
BACKLOG_S = 30.0  # max_backlog_s, max_message_bytes: the defaults
FRAME_BYTES = 1_048_576  # every frame as large as max_message_bytes lets it be


def test_64_sessions_uploading_as_fast_as_tcp_allows_keep_the_server_under_its_memory_bound(
        tone_model_path: Path, tmp_path: Path):
    """Each would send an hour of audio; after 20 s they are cut off. The bound follows from the
    settings (:func:`per_session_bound`: max_backlog_s of float32 audio, the frames the WebSocket
    layer holds, a stream's own state); with websockets' default receive queue it is exceeded."""
    server = start_server(tone_model_path, tmp_path / "server.log", threads=1, max_sessions=UPLOADERS,
                          max_sessions_per_ip=0, max_backlog_s=BACKLOG_S, max_message_bytes=FRAME_BYTES)
    bound = UPLOADERS * per_session_bound(BACKLOG_S, FRAME_BYTES)
    try:
        attack = upload_attack(server, UPLOADERS, FRAME_BYTES, upload_s=3600, wall_s=20, bound_over_idle=bound)
        assert not attack["over_bound"], attack
        assert not attack["stopped_early"], server.log_tail()  # no upload ended by itself: all were slowed
        server.wait_idle(60)
        assert server.get("/readyz")[0] == 200
        closed = closed_sessions(server, UPLOADERS)
        # every session was slowed (reading paused) and ended as gone when its client was
        assert len(closed) == UPLOADERS and {r["outcome"] for r in closed} == {"client_gone"}
        assert all(r["backlog_pauses"] >= 1 for r in closed)
        print(f"\nupload attack: idle {attack['idle_rss_mib']} MiB, peak {attack['peak_rss_mib']} MiB, bound "
              f"+{attack['bound_over_idle_mib']} MiB; {attack['sent_audio_s']:.0f} s of audio sent, "
              f"{sum(r['audio_seconds'] for r in closed):.0f} s read by the server")
    finally:
        assert server.stop() == 0, server.log_tail()


# ---------------------------------------------------------------------- clients that vanish, shutdown
def wait_for_sessions(server: ServerProcess, count: int, timeout_s: float = 60) -> None:
    """Until ``count`` sessions are open (clients in other processes take a while to start)."""
    deadline = time.monotonic() + timeout_s
    while server.get("/readyz")[2]["sessions"] < count:
        assert time.monotonic() < deadline, server.get("/readyz")[2]
        time.sleep(0.05)


def test_clients_killed_mid_utterance_leave_the_server_ready_and_others_get_every_letter(
        tone_model_path: Path, tmp_path: Path, rng: np.random.Generator):
    server = start_server(tone_model_path, tmp_path / "server.log", threads=1)
    killed, beside = sequences(rng, 4, 10), sequences(rng, 4, 6)
    files = []
    for i, sequence in enumerate(killed):
        files.append(tmp_path / f"killed{i}.wav")
        sf.write(files[-1], sequence.audio, tones.SAMPLE_RATE, subtype="PCM_16")
    replays = [subprocess.Popen([sys.executable, "-m", "clients.replay", server.url, str(path), "--realtime",
                                 "--json", "--chunk-ms", "160"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
               for path in files]

    async def scenario() -> list[Any]:
        others = [asyncio.create_task(stream(server.url, tone_pcm(seq), 160, speed=1.0)) for seq in beside]
        await asyncio.sleep(1.0)  # the replays are a second into their audio, the others just started
        for replay in replays:
            replay.send_signal(signal.SIGKILL)
        return await asyncio.gather(*others)

    try:
        wait_for_sessions(server, len(replays))
        time.sleep(0.5)
        results = asyncio.run(scenario())
        for result, sequence in zip(results, beside, strict=True):
            assert_complete(result, sequence)
        server.wait_idle()
        assert server.get("/readyz")[0] == 200
        closed = closed_sessions(server, len(killed) + len(beside))
    finally:
        for replay in replays:
            replay.kill()
            replay.wait()
        assert server.stop() == 0, server.log_tail()
    assert [replay.returncode for replay in replays] == [-signal.SIGKILL] * len(replays)
    assert sorted(r["outcome"] for r in closed) == ["client_gone"] * len(killed) + ["eof"] * len(beside)
    shortest = min(len(s.audio) for s in killed) / tones.SAMPLE_RATE
    for record in (r for r in closed if r["outcome"] == "client_gone"):  # killed mid-utterance
        assert 0.5 < record["audio_seconds"] < shortest, record


def test_sigterm_under_load_gives_every_stream_with_audio_its_final(tone_model_path: Path, tmp_path: Path,
                                                                   rng: np.random.Generator):
    """20 real-time streams, SIGTERM while they are mid-sequence: each gets a final with exactly the
    letters whose tones the server had received (a prefix of what was sent), done, and close 1001;
    the server exits 0."""
    server = start_server(tone_model_path, tmp_path / "server.log", threads=1, max_sessions_per_ip=0)
    said = sequences(rng, 20, 10)

    async def scenario() -> list[tuple[list[dict[str, Any]], int | None]]:
        sessions = []
        for sequence in said:  # starts spread over a second
            frames = paced(tone_pcm(sequence), 80, speed=1.0)
            sessions.append(asyncio.create_task(session(server.url, {"chunk_ms": 160}, frames)))
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)
        server.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(asyncio.gather(*sessions), 90)

    try:
        outcomes = asyncio.run(scenario())
        assert server.process.wait(60) == 0, server.log_tail()
    finally:
        server.stop()
    closed = {r["session_id"]: r for r in log_records(server.log_tail(1_000_000)) if r["event"] == "session closed"}
    assert [r["outcome"] for r in closed.values()] == ["shutting_down"] * len(said)
    cut = 0
    for (messages, code), sequence in zip(outcomes, said, strict=True):
        finals = [m for m in messages if m["type"] == "final"]
        assert [f["reason"] for f in finals] == ["shutdown"], finals
        assert [m["type"] for m in messages[-2:]] == ["done", "error"] and messages[-1]["code"] == "shutting_down"
        assert code == 1001
        heard = finals[0]["text"].split()
        assert heard == list(sequence.letters[: len(heard)]), (heard, sequence.letters)
        # The letters of the audio the server had received (its log says how much): every tone
        # that had ended in it (0.1 s before its end: the model hears a tone that has ended), none
        # that had not begun.
        received = closed[messages[0]["session_id"]]["audio_seconds"]
        spans = tone_spans(sequence.audio)
        assert sum(end < received - 0.1 for _, end in spans) <= len(heard) <= sum(
            start < received for start, _ in spans), (heard, received, spans)
        cut += len(heard) < len(sequence.letters)
    assert cut >= len(said) // 2  # mid-sequence, most of them
