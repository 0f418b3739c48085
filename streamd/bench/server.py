"""Server benchmarks: overhead against the bare engine, real-time capacity, memory.

All three drive a real ``streamd serve`` child process (:mod:`streamd.serverproc`) with real
WebSocket clients (:mod:`clients.common`) on loopback, so what they measure is what a user gets:
the event loop, the protocol, resampling and the engine worker together.

- Overhead: the same streams as :func:`streamd.bench.engine.run_engine`, sent as fast as the server
  takes them, against the engine stepped directly in this process with the same thread count.
  Added latency per message: one real-time stream's update latency through the server minus
  the engine's own step latency for one stream.
- Capacity: for a chunk size, ramp the number of concurrent real-time streams; a count holds
  while the p99 update latency (audio that completes a chunk sent -> its message received)
  stays within the chunk length. Starts are staggered over one chunk, as real clients are, and
  in a second ramp all at once (the arrangement the engine-only ceiling assumes); clients send
  80 ms frames by default (at 20 ms, dozens of clients in this process would compete with the
  server for the same cores; at thousands of streams, one frame per chunk keeps this process
  from being the limit).
  The engine-only ceiling over the same ramp, measured first in the same run: the largest
  batch whose p99 step time fits in one chunk (the most streams the model itself could keep up
  with, before any networking, queueing or real-time pacing).
- Memory: cache bytes per stream (from the encoder's cache shapes), server RSS idle and at the
  largest load, and an open/close soak (clients opening session after session) whose RSS slope
  (MiB per minute) shows any leak, with the sessions that got their final and those that did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from clients.common import ClientError, Pcm, SessionResult, percentiles, run_session
from streamd.bench.engine import chunk_length_ms, run_engine, warm_up
from streamd.log import get_logger
from streamd.models import tones
from streamd.oslimits import raise_open_files_limit
from streamd.server.app import RECEIVE_QUEUE_FRAMES
from streamd.server.protocols import native as native_protocol
from streamd.serverproc import ServerProcess, start_server

MIB = 1024 * 1024
log = get_logger(__name__)


@contextmanager
def serving(model_path: str, log_path: Path | None, **settings: Any) -> Iterator[ServerProcess]:
    """A server for one scenario (``key=value`` settings), stopped and checked to exit cleanly.

    Its log goes to ``log_path`` (kept), or to a temporary file whose tail errors quote. Every
    benchmark client is this machine, one address: no per-address session limit unless given.
    """
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(model_path, log_path or Path(tmp) / "server.log",
                              **{"max_sessions_per_ip": 0, **settings})
        try:
            yield server
        finally:
            status = server.stop()
            if status != 0:
                raise RuntimeError(f"server exited with {status}:\n{server.log_tail()}")


def _log(log_dir: Path | None, scenario: str) -> Path | None:
    return None if log_dir is None else log_dir / f"server-{scenario}.log"


async def run_sessions(url: str, audios: list[np.ndarray], chunk_ms: int, realtime: bool, frame_ms: float,
                       delays: list[float] | None = None) -> list[SessionResult]:
    """One session per audio, all at once, or each started its delay (seconds) from now."""
    async def one(audio: np.ndarray, delay: float) -> SessionResult:
        await asyncio.sleep(delay)
        pcm = Pcm.from_array(audio, tones.SAMPLE_RATE)
        config = {**pcm.config(), "chunk_ms": chunk_ms, "word_timestamps": False}
        return await run_session(url, config, pcm.replay(frame_ms, realtime))

    return await asyncio.gather(*(one(a, d) for a, d in zip(audios, delays or [0.0] * len(audios))))


AUDIO_BANK_S = 120.0  # tone audio each client process makes once; streams are slices of it
START_MARGIN_S = 0.5  # from a level's start time being set to its first session: to reach every process


@functools.cache
def _audio_bank() -> np.ndarray:
    return tones.random_audio(np.random.default_rng(0), AUDIO_BANK_S)


def _stream_audio(seed: int, seconds: float) -> np.ndarray:
    """A stream's audio: a slice of the bank at an offset from ``seed`` (making 8 s of new tone
    audio costs ~6 ms: seconds before a level of a thousand streams could start)."""
    bank, samples = _audio_bank(), int(seconds * tones.SAMPLE_RATE)
    if samples >= len(bank):
        return tones.random_audio(np.random.default_rng(seed), seconds)
    start = seed % (len(bank) - samples)
    return bank[start:start + samples]


@dataclass(frozen=True)
class ClientLoad:
    """One client process's share of a capacity level: real-time sessions, each with its audio
    from a seed (:func:`_stream_audio`), started at ``start_at`` (``time.time()``, shared by every
    client process) plus its delay."""

    url: str
    seeds: list[int]
    delays: list[float]
    seconds: float
    chunk_ms: int
    frame_ms: float
    start_at: float


@dataclass
class ClientRun:
    results: list[SessionResult]
    busy: float  # the process's CPU time over its wall time while its sessions ran: near 1, it was the limit


def run_client_load(load: ClientLoad) -> ClientRun:
    """Run one :class:`ClientLoad` in this process (a client process's task)."""
    raise_open_files_limit(len(load.seeds))
    audios = [_stream_audio(seed, load.seconds) for seed in load.seeds]

    async def run() -> ClientRun:
        # Delays from start_at, not from now: a process that got here late keeps the others' schedule.
        delays = [max(0.0, load.start_at + delay - time.time()) for delay in load.delays]
        cpu, wall = time.process_time(), time.monotonic()
        results = await run_sessions(load.url, audios, load.chunk_ms, True, load.frame_ms, delays)
        return ClientRun(results, (time.process_time() - cpu) / (time.monotonic() - wall))

    return asyncio.run(run())


def _client_process_id(_: int) -> int:
    _audio_bank()
    time.sleep(0.5)
    return os.getpid()


class ClientProcesses:
    """Where capacity clients run: in this process, or spread over ``count`` spawned processes
    (started once, reused by every level), so that at thousands of streams one client event
    loop does not become the limit the benchmark measures."""

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self._pool = None if count == 1 else multiprocessing.get_context("spawn").Pool(count)
        # A level's schedule must not wait for the audio bank (nor, in a pool, for a process to
        # import this module: seconds, torch). In a pool a task sleeps, so that the others take the rest.
        if self._pool is None:
            _audio_bank()
        else:
            for _ in range(10):
                if len(set(self._pool.map(_client_process_id, range(count), 1))) == count:
                    break

    def __enter__(self) -> ClientProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()

    def run(self, url: str, seeds: list[int], delays: list[float], seconds: float, chunk_ms: int,
            frame_ms: float, start_at: float) -> list[ClientRun]:
        """Real-time sessions, one per seed, started ``start_at`` plus their delays; in several
        processes, streams are dealt round-robin so that each one's starts spread over the stagger."""
        count = min(self.count, len(seeds))
        loads = [ClientLoad(url, seeds[i::count], delays[i::count], seconds, chunk_ms, frame_ms, start_at)
                 for i in range(count)]
        if self._pool is None:
            return [run_client_load(loads[0])]
        return self._pool.map(run_client_load, loads, chunksize=1)


def update_latencies(results: list[SessionResult]) -> list[float]:
    return [u for r in results for u in r.latency()["update_samples_s"]]


def overhead(model: Any, model_path: str, size: tuple[int, int], streams: int, seconds: float,
             settings: dict[str, Any], frame_ms: float = 20.0, repeats: int = 5, seed: int = 0,
             log_dir: Path | None = None) -> dict[str, Any]:
    """Throughput through the server vs the bare engine, and the latency the server adds.

    Engine and server runs alternate (the server idles while the engine runs here), and the
    ratio is the median over the pairs: on a shared machine the speed of the same run drifts by
    tens of percent over minutes, and a pair measured back to back shares the same conditions.
    Each server run also records the CPU time of the server's event loop, of its engine (its
    other threads, or the engine process) and of the clients (this process), to show where a
    gap comes from: the engine's own work slowed by sharing the machine, or the rest.
    """
    rng = np.random.default_rng(seed)
    chunk_ms = chunk_length_ms(size)
    audios = [tones.random_audio(rng, seconds) for _ in range(streams)]
    warm_up(model, size, rng)
    alone = run_engine(model, [audios[0]], size, max_batch=1)
    engine_s, served_s, loop_cpu, engine_cpu, client_cpu = [], [], [], [], []
    with serving(model_path, _log(log_dir, f"overhead-{chunk_ms}"), **settings, max_batch=streams,
                 max_sessions=streams + 1) as server:
        asyncio.run(run_sessions(server.url, [tones.random_audio(rng, 2.0)], chunk_ms, False, chunk_ms))  # warm-up
        for _ in range(repeats):
            engine_s.append(run_engine(model, audios, size, max_batch=streams).compute_s)
            cpu_before, clients_before, started = server.cpu_seconds(), time.process_time(), time.perf_counter()
            asyncio.run(run_sessions(server.url, audios, chunk_ms, False, chunk_ms))
            served_s.append(time.perf_counter() - started)
            client_cpu.append(time.process_time() - clients_before)
            loop, engine = (after - before for before, after in zip(cpu_before, server.cpu_seconds()))
            loop_cpu.append(loop)
            engine_cpu.append(engine)
        realtime = asyncio.run(run_sessions(server.url, [audios[0]], chunk_ms, True, frame_ms))
    latency = percentiles(update_latencies(realtime))
    return {
        "scenario": "overhead", "chunk_ms": chunk_ms, "streams": streams, "seconds": seconds,
        "engine_compute_s": [round(x, 3) for x in engine_s], "server_wall_s": [round(x, 3) for x in served_s],
        "throughput_ratio": round(float(np.median(np.array(engine_s) / np.array(served_s))), 3),
        "server_loop_cpu_s": [round(x, 3) for x in loop_cpu],
        "server_engine_cpu_s": [round(x, 3) for x in engine_cpu],
        "client_cpu_s": [round(x, 3) for x in client_cpu],
        "engine_step_p50_s": round(alone.step_p50_ms / 1000, 4),
        "server_update_s": latency,
        "added_latency_p50_s": round(latency["p50"] - alone.step_p50_ms / 1000, 4) if latency["p50"] else None,
    }


def engine_ceiling(model: Any, size: tuple[int, int], ramp: list[int], seconds: float,
                   rng: np.random.Generator) -> tuple[int, list[dict[str, Any]]]:
    """The largest stream count of ``ramp`` whose batched p99 step time fits in one chunk."""
    chunk_ms = chunk_length_ms(size)
    ceiling, tried = 0, []
    for count in ramp:
        warm_up(model, size, rng, count)
        run = run_engine(model, [tones.random_audio(rng, seconds) for _ in range(count)], size, max_batch=count)
        tried.append({"streams": count, "step_p99_ms": round(run.step_p99_ms, 1)})
        log.info("engine ceiling level", chunk_ms=chunk_ms, **tried[-1])
        if run.step_p99_ms > chunk_ms:
            break
        ceiling = count
    return ceiling, tried


def _ramp(server: ServerProcess, clients: ClientProcesses, ramp: list[int], chunk_ms: int, seconds: float,
          frame_ms: float, stagger_s: float, rng: np.random.Generator) -> tuple[int, list[dict[str, Any]]]:
    """Real-time stream counts in order until one misses: (last count that held, levels).

    Each level records the server's RSS and GPU memory as its sessions end (PyTorch's caching
    allocator keeps what the level's largest step needed, so that is the level's peak there), the
    CPU share of the server's event-loop thread and of its other threads (the engine's, torch's)
    while the level ran (one thread holds Python's lock at a time: the two together near 1 mean
    the server's Python work is the limit), and the busiest client process's CPU share (near 1:
    the clients, not the server, set the pace).
    """
    levels, holds = [], 0
    for count in ramp:
        seeds = [int(seed) for seed in rng.integers(2**63, size=count)]
        delays = [float(d) for d in np.linspace(0.0, stagger_s, count, endpoint=False)]
        cpu_before, start_at = server.cpu_seconds(), time.time() + START_MARGIN_S
        runs = clients.run(server.url, seeds, delays, seconds, chunk_ms, frame_ms, start_at)
        busy = [(after - before) / (time.time() - start_at) for before, after in zip(cpu_before, server.cpu_seconds())]
        results = [result for run in runs for result in run.results]
        latency = percentiles(update_latencies(results))
        finals = [r.latency()["final_s"] for r in results]
        held = latency["p99"] is not None and latency["p99"] <= chunk_ms / 1000
        levels.append({"streams": count, "sessions_done": len(results), "update_s": latency,
                       "final_p50_s": percentiles(finals)["p50"],
                       "holds": held, "rss_mib": _mib(server.rss_bytes()), "gpu_mib": _mib(server.gpu_bytes()),
                       "server_loop_busy": round(busy[0], 3), "server_other_threads_busy": round(busy[1], 3),
                       "client_busy_max": round(max(run.busy for run in runs), 4)})
        log.info("capacity level", chunk_ms=chunk_ms, **levels[-1])
        if not held:
            break
        holds = count
        server.wait_idle()
    return holds, levels


def _mib(count: int | None) -> float | None:
    return None if count is None else round(count / MIB, 1)


def _peak(idle: float | None, levels: list[dict[str, Any]], key: str) -> float | None:
    """The largest of the idle reading and the levels' (None where nothing was measured)."""
    values = [v for v in [idle, *(lv[key] for lv in levels)] if v is not None]
    return max(values) if values else None


def capacity(model: Any, model_path: str, size: tuple[int, int], ramp: list[int], seconds: float,
             settings: dict[str, Any], max_batch: int, frame_ms: float | None = 80.0, aligned: bool = True,
             ceiling: bool = True, client_processes: int = 1, seed: int = 0,
             log_dir: Path | None = None) -> dict[str, Any]:
    """Concurrent real-time streams while p99 update latency stays within the chunk length, and
    the engine-only ceiling it is measured against.

    Two ramps: starts staggered over one chunk (as real clients arrive: the capacity), and all
    starts at once (chunks complete together, as the engine-only ceiling assumes; the gap
    between the two is the cost of streams that cannot share a step). ``frame_ms`` None sends
    one chunk per frame; ``aligned`` False skips the second ramp; ``ceiling`` False skips the
    engine-only ramp (where the engine benchmark measures it: it costs a model run per level);
    ``client_processes`` spreads the clients over that many processes.
    """
    rng = np.random.default_rng(seed)
    chunk_ms = chunk_length_ms(size)
    frame_ms = frame_ms or chunk_ms
    ceiling, engine_levels = engine_ceiling(model, size, ramp, seconds, rng) if ceiling else (None, [])
    aligned_holds, aligned_levels = None, []
    with serving(model_path, _log(log_dir, f"capacity-{chunk_ms}"), **settings, max_batch=max_batch,
                 max_sessions=max(ramp) + 1) as server, ClientProcesses(client_processes) as clients:
        idle_rss, idle_gpu = _mib(server.rss_bytes()), _mib(server.gpu_bytes())
        if aligned:
            aligned_holds, aligned_levels = _ramp(server, clients, ramp, chunk_ms, seconds, frame_ms, 0.0, rng)
            server.wait_idle()
        holds, levels = _ramp(server, clients, ramp, chunk_ms, seconds, frame_ms, chunk_ms / 1000, rng)
    return {"scenario": "capacity", "chunk_ms": chunk_ms, "seconds": seconds, "frame_ms": frame_ms,
            "client_processes": client_processes,
            "capacity_streams": holds, "aligned_capacity_streams": aligned_holds,
            "engine_ceiling_streams": ceiling, "engine_levels": engine_levels,
            "capacity_vs_ceiling": round(holds / ceiling, 3) if ceiling else None,
            "aligned_vs_ceiling": round(aligned_holds / ceiling, 3) if ceiling and aligned_holds is not None else None,
            "idle_rss_mib": idle_rss, "peak_rss_mib": _peak(idle_rss, levels + aligned_levels, "rss_mib"),
            "idle_gpu_mib": idle_gpu, "peak_gpu_mib": _peak(idle_gpu, levels + aligned_levels, "gpu_mib"),
            "levels": levels, "aligned_levels": aligned_levels}


def cache_bytes_per_stream(model: Any) -> int:
    """Encoder cache (attention and convolution) plus the prediction network's LSTM state."""
    parameter = next(model.encoder.parameters())
    caches = model.encoder.get_initial_cache_state(batch_size=1, dtype=parameter.dtype, device=parameter.device)
    encoder = sum(c.numel() * c.element_size() for c in caches if torch.is_tensor(c))
    decoder = model.decoder.initialize_state(torch.zeros(1, 1, dtype=parameter.dtype))
    return encoder + sum(s.numel() * s.element_size() for s in decoder)


@dataclass
class SoakCounts:
    sessions: int = 0  # sessions that ended with their final and done (close 1000)
    finals_lost: int = 0  # sessions opened and sent audio whose final or done never came
    exact: int = 0  # finals equal to the letters sent (meaningful for the tone model only)


async def _soak_client(url: str, chunk_ms: int, realtime: bool, rng: np.random.Generator, until: float,
                       counts: SoakCounts) -> None:
    """Session after session until ``until`` (``time.monotonic()``): 1-6 letters (0.3-3.6 s)."""
    config = {"sample_rate": tones.SAMPLE_RATE, "chunk_ms": chunk_ms, "word_timestamps": False}
    while time.monotonic() < until:
        sequence = tones.synthesize(tones.letters_without_runs(rng, int(rng.integers(1, 7))), rng)
        pcm = Pcm.from_array(sequence.audio, tones.SAMPLE_RATE)
        try:
            result = await run_session(url, config, pcm.replay(80, realtime))
        except ClientError as exc:
            log.warning("soak session failed", error=str(exc))
            counts.finals_lost += 1
            continue
        ended = bool(result.finals) and result.close_code == 1000
        counts.sessions += ended
        counts.finals_lost += not ended
        counts.exact += result.text == sequence.text


def soak(model_path: str, minutes: float, streams: int, chunk_ms: int, settings: dict[str, Any], seed: int = 0,
         sample_every_s: float = 5.0, log_dir: Path | None = None, realtime: bool = False) -> dict[str, Any]:
    """``streams`` clients open session after session for ``minutes`` (1-6 tone letters, 0.3-3.6 s
    each, sent as fast as accepted or, ``realtime``, at the audio's pace); RSS is sampled
    throughout. The slope is fitted after the first fifth, which holds allocator warm-up.
    Counted: sessions that ended with their final and ``done``, sessions that did not (finals
    lost), and finals whose text is the letters sent."""
    samples: list[tuple[float, int]] = []
    counts = SoakCounts()
    raise_open_files_limit(streams)
    with serving(model_path, _log(log_dir, "soak"), **settings, max_batch=streams,
                 max_sessions=streams + 1) as server:
        async def run() -> None:
            started = time.monotonic()
            until = started + minutes * 60
            clients = [asyncio.create_task(_soak_client(server.url, chunk_ms, realtime,
                                                        np.random.default_rng([seed, i]), until, counts))
                       for i in range(streams)]
            while time.monotonic() < until:
                samples.append((time.monotonic() - started, server.rss_bytes()))
                await asyncio.sleep(min(sample_every_s, max(0.0, until - time.monotonic())))
            await asyncio.gather(*clients)
            samples.append((time.monotonic() - started, server.rss_bytes()))

        asyncio.run(run())
        server.wait_idle()
        rss_idle_after = server.rss_bytes()
    t = np.array([s[0] for s in samples]) / 60
    rss = np.array([s[1] for s in samples]) / MIB
    settled = t >= t[-1] / 5
    slope = float(np.polyfit(t[settled], rss[settled], 1)[0]) if settled.sum() >= 2 else None
    return {"scenario": "soak", "minutes": minutes, "streams": streams, "realtime": realtime,
            "sessions": counts.sessions, "finals_lost": counts.finals_lost, "exact_transcripts": counts.exact,
            "chunk_ms": chunk_ms, "rss_start_mib": round(float(rss[0]), 1), "rss_end_mib": round(float(rss[-1]), 1),
            "rss_idle_after_mib": _mib(rss_idle_after), "rss_max_mib": round(float(rss.max()), 1),
            "rss_slope_mib_per_min": round(slope, 3) if slope is not None else None,
            "rss_slope_mib_per_hour": round(60 * slope, 1) if slope is not None else None,
            "rss_samples_mib": [round(float(x), 1) for x in rss]}


# The upload attack: sessions sending an hour of audio each as fast as TCP allows.
PCM16_BYTES_PER_S = tones.SAMPLE_RATE * 2  # what the attack's clients send: 16 kHz pcm_s16le
ENGINE_BYTES_PER_S = tones.SAMPLE_RATE * 4  # what the engine holds: float32 at the model's 16 kHz
SOCKET_READ_BYTES = 256 * 1024  # what one socket read brings in (asyncio's selector transport)
STREAM_BYTES = 2 * MIB  # a stream's own state and buffers (64 real-time streams: ~1.4 MiB each)


def per_session_bound(backlog_s: float, frame_bytes: int) -> int:
    """The most memory one session holds while its client sends 16 kHz PCM16 in frames of
    ``frame_bytes`` faster than the engine consumes it (docs/security.md):

    - its unprocessed audio: reading pauses once it exceeds ``backlog_s`` (``max_backlog_s``), so
      at most that plus the frame that crossed it, as float32 at 16 kHz, three times over while a
      step joins what arrived into one array: the array being consumed (a view of the last join
      keeps all of it), the pieces that arrived since, and the join;
    - the WebSocket layer's receive queue while the session does not read:
      ``RECEIVE_QUEUE_FRAMES`` frames and the one past it, one partial frame, one socket read;
    - the stream's own state (caches, buffers: ``STREAM_BYTES``).

    The kernel's socket buffers (``net.ipv4.tcp_rmem``) are not in the process's memory."""
    frame_s = frame_bytes / PCM16_BYTES_PER_S
    engine = 3 * (backlog_s + frame_s) * ENGINE_BYTES_PER_S
    websocket = (RECEIVE_QUEUE_FRAMES + 2) * frame_bytes + SOCKET_READ_BYTES
    return int(engine + websocket + STREAM_BYTES)


def upload_attack(server: ServerProcess, sessions: int, frame_bytes: int, upload_s: float, wall_s: float,
                  bound_over_idle: int | None = None, chunk_ms: int = 1120) -> dict[str, Any]:
    """``sessions`` clients each send ``upload_s`` of PCM16 in frames of ``frame_bytes`` as fast as
    TCP allows, reading (and dropping) what the server sends, for ``wall_s``; the server's RSS is
    sampled every 0.25 s, and the attack stops at once if it rises ``bound_over_idle`` above the
    idle reading. Then every connection is dropped (no close frame: it would wait behind the
    unread audio). ``stopped_early``: an upload ended by itself (the server closed it)."""
    audio = tones.random_audio(np.random.default_rng(0), frame_bytes / PCM16_BYTES_PER_S + 1)
    frame = Pcm.from_array(audio, tones.SAMPLE_RATE).data[:frame_bytes]  # the content does not matter
    idle = server.rss_bytes()
    sent = [0] * sessions

    async def upload(index: int, ws: ClientConnection) -> None:
        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:
                    pass

        reader = asyncio.create_task(read())
        try:
            await ws.send(native_protocol.config(chunk_ms=chunk_ms))
            while sent[index] < upload_s * PCM16_BYTES_PER_S:
                await ws.send(frame)  # waits while TCP's window is shut: the server stopped reading
                sent[index] += len(frame)
        finally:
            reader.cancel()

    async def attack() -> tuple[list[int], bool]:
        # No keepalive pings from the clients: a server that is not reading a socket reads no ping
        # either, and a client would close itself for want of a pong.
        clients = [await connect(server.url, ping_interval=None, compression=None) for _ in range(sessions)]
        uploads = [asyncio.create_task(upload(i, ws)) for i, ws in enumerate(clients)]
        rss, deadline = [server.rss_bytes()], time.monotonic() + wall_s
        while time.monotonic() < deadline and not any(task.done() for task in uploads):
            if bound_over_idle is not None and rss[-1] > idle + bound_over_idle:
                break
            await asyncio.sleep(0.25)
            rss.append(server.rss_bytes())
        stopped_early = any(task.done() for task in uploads)
        for task, ws in zip(uploads, clients, strict=True):
            task.cancel()
            ws.transport.abort()
        await asyncio.gather(*uploads, return_exceptions=True)
        return rss, stopped_early

    started = time.monotonic()
    rss, stopped_early = asyncio.run(attack())
    over = bound_over_idle is not None and max(rss) > idle + bound_over_idle
    return {"scenario": "upload_attack", "sessions": sessions, "frame_bytes": frame_bytes, "upload_s": upload_s,
            "wall_s": round(time.monotonic() - started, 2), "stopped_early": stopped_early,
            "idle_rss_mib": _mib(idle), "peak_rss_mib": _mib(max(rss)),
            "bound_over_idle_mib": _mib(bound_over_idle), "over_bound": over,
            "sent_audio_s": round(sum(sent) / PCM16_BYTES_PER_S, 1), "rss_samples_mib": [_mib(x) for x in rss]}


def _s(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.0f}"


def overhead_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| chunk ms | streams | engine s (median) | server s (median) | server/engine throughput (median "
             "of pairs) | server CPU s, engine / loop; clients CPU s (medians) | engine step p50 ms "
             "| server update p50 / p99 ms | added p50 ms |",
             "|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['chunk_ms']} | {r['streams']} | {np.median(r['engine_compute_s']):.2f} | "
              f"{np.median(r['server_wall_s']):.2f} | {r['throughput_ratio']:.2f} | "
              f"{np.median(r['server_engine_cpu_s']):.2f} / {np.median(r['server_loop_cpu_s']):.2f}; "
              f"{np.median(r['client_cpu_s']):.2f} | {_s(r['engine_step_p50_s'])} | "
              f"{_s(r['server_update_s']['p50'])} / {_s(r['server_update_s']['p99'])} | "
              f"{_s(r['added_latency_p50_s'])} |" for r in rows]
    return "\n".join(lines)


def _levels(levels: list[dict[str, Any]]) -> str:
    return ", ".join(f"{lv['streams']}: {_s(lv['update_s']['p50'])}/{_s(lv['update_s']['p99'])}"
                     + ("" if lv["holds"] else " (over)") for lv in levels)


def _gpu(row: dict[str, Any]) -> str:
    idle, peak = row.get("idle_gpu_mib"), row.get("peak_gpu_mib")
    return "-" if idle is None and peak is None else f"{idle} / {peak}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cpu_shares(levels: list[dict[str, Any]]) -> str:
    """The last level's CPU shares: server loop / server's other threads / busiest client process."""
    if not levels:
        return "-"
    last = levels[-1]
    return f"{last['server_loop_busy']} / {last['server_other_threads_busy']} / {last['client_busy_max']:.2f}"


def capacity_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| chunk ms | engine-only ceiling | held, starts staggered | / ceiling | held, starts aligned "
             "| / ceiling | update p50 / p99 ms per level: staggered; aligned | RSS idle / peak MiB "
             "| GPU idle / peak MiB | CPU share at the last staggered level: server loop / other threads / client |",
             "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['chunk_ms']} | {_count(r['engine_ceiling_streams'])} | {r['capacity_streams']} | "
              f"{_ratio(r['capacity_vs_ceiling'])} | {_count(r['aligned_capacity_streams'])} | "
              f"{_ratio(r['aligned_vs_ceiling'])} | {_levels(r['levels'])}; {_levels(r['aligned_levels'])} | "
              f"{r['idle_rss_mib']} / {r['peak_rss_mib']} | {_gpu(r)} | {_cpu_shares(r['levels'])} |"
              for r in rows]
    return "\n".join(lines)


def memory_table(row: dict[str, Any]) -> str:
    pace = "real time" if row["realtime"] else "as fast as accepted"
    return "\n".join([
        "| cache KiB per stream | soak minutes | clients, pace | sessions with their final | finals lost "
        "| exact transcripts | RSS start / max / end MiB | RSS slope MiB/min (MiB/h) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
        f"| {row['cache_bytes_per_stream'] / 1024:.1f} | {row['minutes']} | {row['streams']}, {pace} | "
        f"{row['sessions']} | {row['finals_lost']} | {row['exact_transcripts']} | "
        f"{row['rss_start_mib']} / {row['rss_max_mib']} / {row['rss_end_mib']} | "
        f"{row['rss_slope_mib_per_min']} ({row['rss_slope_mib_per_hour']}) |",
    ])
