"""Scale-out: HAProxy with the shipped deploy/haproxy.cfg in front of three real ``streamd serve``
replicas on loopback, real WebSocket clients through it, the tone model.

The balancer's configuration is the shipped file with only its ``bind`` and ``server`` addresses
replaced, so what is tested is what an operator runs. Checked: 24 concurrent sessions all get
their letters, a third on each replica; a new session goes to the replica with the fewest; a
full replica (503 on ``/readyz`` and on upgrades) is skipped; the balancer limits sessions per
client address (the replicas see only its address); a replica stopped with SIGTERM under load
sends its sessions their finals through the balancer while new sessions go to the other two.
Which replica served a session is read from the replicas' logs (``session open`` carries the
``session_id`` the client got in ``ready``). Clients come from two loopback addresses where
more sessions than one address may hold are open. The SIGTERM test stops a replica: it runs last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, log_records
from test_server import CHUNKS_MS, letters_sequence, tone_pcm
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamd.models import tones
from streamd.serverproc import ServerProcess, free_port, start_server

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None,
                                reason="HAProxy is not installed (apt-get install haproxy; .ci/run installs it)")

SHIPPED_CONFIG = ROOT / "deploy" / "haproxy.cfg"
REPLICAS = 3
MAX_SESSIONS = 12  # per replica: 24 sessions spread over three fit with room; one is quick to fill
# Behind the balancer every session comes from its address: the per-client limit is the balancer's.
SETTINGS = {"threads": 1, "max_sessions": MAX_SESSIONS, "max_sessions_per_ip": 0}
SESSIONS_PER_CLIENT = 16  # the shipped file's limit per client address
CLIENT, OTHER_CLIENT = "127.0.0.1", "127.0.0.2"  # Linux routes all of 127/8 to loopback


def balancer_config(shipped: str, listen_port: int, replica_ports: list[int]) -> str:
    """The shipped configuration listening on loopback ``listen_port``, its ``server`` lines (in
    order, parameters kept) pointing at the replicas on loopback."""
    lines = shipped.splitlines()
    binds = [i for i, line in enumerate(lines) if line.split()[:1] == ["bind"]]
    servers = [i for i, line in enumerate(lines) if line.split()[:1] == ["server"]]
    assert len(binds) == 1 and len(servers) == len(replica_ports), "the shipped file's bind and server lines"
    lines[binds[0]] = f"    bind 127.0.0.1:{listen_port}"
    for index, port in zip(servers, replica_ports, strict=True):
        _, name, _address, *params = lines[index].split()
        lines[index] = "    " + " ".join(["server", name, f"127.0.0.1:{port}", *params])
    return "\n".join(lines) + "\n"


@dataclass
class Balancer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text()[-chars:]


@pytest.fixture(scope="module")
def replicas(tone_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    folder = tmp_path_factory.mktemp("replicas")
    with ThreadPoolExecutor(REPLICAS) as pool:  # they load the model at the same time
        starting = [pool.submit(start_server, tone_model_path, folder / f"replica{i}.log", **SETTINGS)
                    for i in range(REPLICAS)]
        started = [future.result() for future in starting]
    yield started
    for replica in started:
        assert replica.stop() == 0, replica.log_tail()


@pytest.fixture(scope="module")
def balancer(replicas: list[ServerProcess], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    folder = tmp_path_factory.mktemp("haproxy")
    config = folder / "haproxy.cfg"
    port = free_port()
    config.write_text(balancer_config(SHIPPED_CONFIG.read_text(), port, [r.port for r in replicas]))
    log_path = folder / "haproxy.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT)
    started = Balancer(process, port, log_path)
    try:
        wait_for(lambda: process.poll() is not None or listening(port), "haproxy listens")
        assert process.poll() is None, f"haproxy exited with {process.returncode}:\n{started.log_tail()}"
        yield started
    finally:
        process.terminate()
        process.wait(10)


# ---------------------------------------------------------------------- helpers
def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def served_by(replicas: list[ServerProcess], session_ids: list[str]) -> list[int]:
    """The index of the replica that opened each session."""
    opened = [{r["session_id"] for r in log_records(replica.log_path.read_text()) if r["event"] == "session open"}
              for replica in replicas]
    where = [[i for i, ids in enumerate(opened) if session_id in ids] for session_id in session_ids]
    assert all(len(found) == 1 for found in where), f"each session on exactly one replica: {where}"
    return [found[0] for found in where]


def all_idle(replicas: list[ServerProcess]) -> None:
    for replica in replicas:
        replica.wait_idle()


# ---------------------------------------------------------------------- sessions held open
@dataclass
class HeldSession:
    session_id: str
    messages: list[dict[str, Any]]
    close_code: int | None

    @property
    def finals(self) -> list[tuple[str, str]]:
        return [(m["text"], m["reason"]) for m in self.messages if m["type"] == "final"]

    def assert_complete(self, sequence: tones.ToneSequence) -> None:
        """Ended by its ``eof``: the letters, then ``done`` and close 1000."""
        assert self.finals == [(sequence.text, "eof")], self.messages
        assert self.messages[-1]["type"] == "done" and self.close_code == 1000


async def hold(url: str, source: str, sequence: tones.ToneSequence | None, chunk_ms: int,
               audio_sent: asyncio.Event, release: asyncio.Event) -> HeldSession:
    """From address ``source``: config, the sequence's audio (none for ``None``), then messages
    until the server closes; ``eof`` once ``release`` is set, unless the server closed first."""
    async with connect(url, compression=None, local_addr=(source, 0)) as ws:
        await ws.send(json.dumps({"type": "config", "chunk_ms": chunk_ms}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready
        for chunk in ([] if sequence is None else tone_pcm(sequence).chunks(80)):
            await ws.send(chunk)
        audio_sent.set()
        reading = asyncio.create_task(read_until_closed(ws))
        released = asyncio.create_task(release.wait())
        await asyncio.wait({reading, released}, return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"type": "eof"}))
        messages = await asyncio.wait_for(reading, 60)
        released.cancel()
    return HeldSession(ready["session_id"], messages, ws.close_code)


async def read_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    messages = []
    with contextlib.suppress(ConnectionClosed):
        async for text in ws:
            messages.append(json.loads(text))
    return messages


class HeldSessions:
    """Sessions from one client address, held open until :meth:`finish` sends their ``eof``
    (or the server ends them first)."""

    def __init__(self, url: str, source: str = CLIENT) -> None:
        self.url = url
        self.source = source
        self.release = asyncio.Event()
        self.tasks: list[asyncio.Task[HeldSession]] = []

    async def open(self, sequences: list[tones.ToneSequence | None]) -> None:
        """One session per sequence, all at once (chunk sizes in turn); returns once each has
        sent its audio."""
        sent = [asyncio.Event() for _ in sequences]
        opened = [asyncio.create_task(hold(self.url, self.source, sequence, CHUNKS_MS[i % len(CHUNKS_MS)], event,
                                           self.release))
                  for i, (sequence, event) in enumerate(zip(sequences, sent, strict=True))]
        self.tasks += opened
        for event, task in zip(sent, opened, strict=True):
            waiting = asyncio.create_task(event.wait())
            await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if not event.is_set():
                raise AssertionError(f"a session ended before it sent its audio: {task.result()}")

    async def finish(self) -> list[HeldSession]:
        self.release.set()
        return await asyncio.wait_for(asyncio.gather(*self.tasks), 90)


async def complete(url: str, source: str, sequences: list[tones.ToneSequence]) -> list[HeldSession]:
    """Whole sessions, all at once: each sends its audio, then ``eof``."""
    sessions = HeldSessions(url, source)
    await sessions.open(sequences)
    return await sessions.finish()


# ---------------------------------------------------------------------- tests
def test_the_shipped_config_is_valid_and_says_what_the_deployment_needs(replicas: list[ServerProcess],
                                                                        tmp_path: Path):
    shipped = SHIPPED_CONFIG.read_text()
    config = tmp_path / "haproxy.cfg"
    config.write_text(balancer_config(shipped, free_port(), [r.port for r in replicas]))
    checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    directives = [line.split("#")[0].split() for line in shipped.splitlines()]
    assert ["balance", "leastconn"] in directives
    assert ["http-check", "send", "meth", "GET", "uri", "/readyz", "ver", "HTTP/1.1", "hdr", "Host",
            "localhost"] in directives
    assert "503" in next(d for d in directives if d[:1] == ["retry-on"])
    tunnel = next(d for d in directives if d[:2] == ["timeout", "tunnel"])
    assert int(re.fullmatch(r"(\d+)s", tunnel[2])[1]) > 30, "above streamd's idle_timeout_s default"


def test_24_concurrent_sessions_through_the_balancer_get_their_letters_a_third_on_each_replica(
        balancer: Balancer, replicas: list[ServerProcess], rng: np.random.Generator):
    sequences = letters_sequence(rng, 24)

    async def scenario() -> list[HeldSession]:
        halves = [HeldSessions(balancer.url, source) for source in (CLIENT, OTHER_CLIENT)]
        await asyncio.gather(halves[0].open(sequences[:12]), halves[1].open(sequences[12:]))
        return [session for half in await asyncio.gather(*(h.finish() for h in halves)) for session in half]

    sessions = asyncio.run(scenario())
    for session, sequence in zip(sessions, sequences, strict=True):
        session.assert_complete(sequence)
    per_replica = np.bincount(served_by(replicas, [s.session_id for s in sessions]), minlength=REPLICAS)
    assert per_replica.tolist() == [8, 8, 8], "all open at once: least-connections spreads them evenly"


def test_a_new_session_goes_to_the_replica_with_the_fewest(balancer: Balancer, replicas: list[ServerProcess]):
    all_idle(replicas)

    # Three sessions opened one after another: one per replica. Then the second one ends, and a
    # new session must go to its replica (round robin would pick the first one's replica again).
    async def scenario() -> tuple[list[str], str]:
        held = [HeldSessions(balancer.url) for _ in range(REPLICAS)]
        for sessions in held:
            await sessions.open([None])
        (ended,) = await held[1].finish()
        (replica,) = served_by(replicas, [ended.session_id])
        await asyncio.to_thread(replicas[replica].wait_idle)  # its connection to the balancer closed
        newcomer = HeldSessions(balancer.url)
        await newcomer.open([None])
        (first,), (third,), (new,) = [await sessions.finish() for sessions in (held[0], held[2], newcomer)]
        return [first.session_id, ended.session_id, third.session_id], new.session_id

    first_three, newcomer = asyncio.run(scenario())
    where = served_by(replicas, first_three)
    assert sorted(where) == list(range(REPLICAS)), f"one per replica: {where}"
    assert served_by(replicas, [newcomer]) == [where[1]]


def test_a_full_replica_is_skipped(balancer: Balancer, replicas: list[ServerProcess], rng: np.random.Generator):
    full = replicas[0]
    all_idle(replicas)
    sequences = letters_sequence(rng, 6)

    async def scenario() -> list[HeldSession]:
        # Filled directly, not through the balancer: its own count of connections to the replica
        # stays 0, so least-connections picks it first; its 503s must send the sessions elsewhere.
        held = [await connect(full.url) for _ in range(MAX_SESSIONS)]
        try:
            status, _, body = full.get("/readyz")
            assert (status, body["status"]) == (503, "full")
            return await complete(balancer.url, CLIENT, sequences)
        finally:
            for ws in held:
                await ws.close()

    sessions = asyncio.run(scenario())
    for session, sequence in zip(sessions, sequences, strict=True):
        session.assert_complete(sequence)
    assert 0 not in served_by(replicas, [s.session_id for s in sessions])


def test_the_balancer_limits_sessions_per_client_address(balancer: Balancer, replicas: list[ServerProcess]):
    all_idle(replicas)

    async def scenario() -> InvalidStatus:
        held = [await connect(balancer.url) for _ in range(SESSIONS_PER_CLIENT)]
        try:
            with pytest.raises(InvalidStatus) as refused:
                await connect(balancer.url)
            async with connect(balancer.url, local_addr=(OTHER_CLIENT, 0)):
                pass  # another address still gets in
            return refused.value
        finally:
            for ws in held:
                await ws.close()

    refused = asyncio.run(scenario())
    assert refused.response.status_code == 429 and refused.response.headers["Retry-After"] == "1"
    assert json.loads(refused.response.body)["status"] == "too_many_sessions"


def test_sigterm_to_one_replica_under_load_finals_for_its_sessions_new_ones_go_to_the_others(
        balancer: Balancer, replicas: list[ServerProcess], rng: np.random.Generator):
    all_idle(replicas)
    held_sequences = letters_sequence(rng, 9)
    later_sequences = letters_sequence(rng, 6)
    stopped = replicas[1]

    async def scenario() -> tuple[list[HeldSession], list[HeldSession]]:
        held = HeldSessions(balancer.url)
        await held.open(held_sequences)
        await asyncio.sleep(1.0)  # the replicas have read the audio
        stopped.process.send_signal(signal.SIGTERM)
        # Its port closes at once, before the health check notices: a new connection that the
        # balancer sends there is refused, and retried on another replica.
        await asyncio.to_thread(wait_for, lambda: not listening(stopped.port), "the stopped replica's port closed")
        later = await complete(balancer.url, OTHER_CLIENT, later_sequences)
        return await held.finish(), later

    held, later = asyncio.run(scenario())
    assert stopped.process.wait(60) == 0, stopped.log_tail()
    where = served_by(replicas, [session.session_id for session in held])
    assert where.count(1) == 3, f"a third of the sessions on the stopped replica: {where}"
    for session, sequence, replica in zip(held, held_sequences, where, strict=True):
        if replica == 1:  # ended by the shutdown, its audio decoded (docs/server.md, lifecycle)
            assert session.finals == [(sequence.text, "shutdown")], session.messages
            assert [m["type"] for m in session.messages[-2:]] == ["done", "error"]
            assert session.messages[-1]["code"] == "shutting_down" and session.close_code == 1001
        else:
            session.assert_complete(sequence)
    for session, sequence in zip(later, later_sequences, strict=True):
        session.assert_complete(sequence)
    assert 1 not in served_by(replicas, [s.session_id for s in later])
