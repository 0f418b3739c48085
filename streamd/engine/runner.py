"""The bridge between asyncio sessions and the single-threaded :class:`StreamingEngine`.

One worker thread (a ``ThreadPoolExecutor(1)``) owns the engine: it is built there and every
engine call runs there, so the engine needs no locks and the event loop never waits for the
model. Sessions do not wait for the worker either: ``push``/``end``/``finalize``/``close`` go
into an inbox (in order) that the worker applies before each step, so however long a step
takes, all audio that arrived meanwhile joins the next one. A pump task on the event loop keeps
the worker stepping while there is work and puts each :class:`StreamUpdate` on the queue of
the session that owns the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from streamd.engine.engine import DeviceFailedError, StreamingEngine
from streamd.engine.load import LoadWindow
from streamd.engine.stream import StreamOptions, StreamUpdate
from streamd.log import get_logger
from streamd.shims import overwritten_byte_objects

log = get_logger(__name__)
T = TypeVar("T")

WARMUP_SECONDS = 2.0  # longer than the first chunk of the largest chunk size


def freeze_long_lived_objects() -> None:
    """Leave every object alive now out of Python's garbage collection (call once the model is
    loaded and warmed up). The model, NeMo's modules and what a warm-up created live as long as
    the process (~720k objects even with a small model): a full collection traverses them all,
    holding the GIL — 340 ms on the CPU, one within a 6 s run of 352 streams at 160 ms chunks,
    stalling the event loop and the engine together. Frozen, they are left out of it (5 ms)."""
    gc.collect()
    gc.freeze()


class EngineFailure(RuntimeError):
    """The engine raised for this stream (a bug); the stream is gone."""


@dataclass(frozen=True)
class Delivery:
    """One stream's update from one step, with the step's duration (for per-session stats)."""

    update: StreamUpdate
    step_seconds: float


@dataclass
class _Cycle:
    """What one worker cycle (inbox, then at most one step) produced."""

    updates: list[StreamUpdate]
    step_seconds: float
    failed: dict[int, str]  # stream id -> why its command or the step failed


Sink = asyncio.Queue[Delivery | EngineFailure]


class EngineRunner:
    """Runs a :class:`StreamingEngine` on its own thread; all methods are for the event loop."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="streamd-engine")
        self._engine: StreamingEngine | None = None
        self._inbox: deque[tuple[Callable[..., None], int, tuple[Any, ...]]] = deque()
        self._failed: dict[int, str] = {}  # worker side: streams whose command failed, not yet reported
        self._sinks: dict[int, Sink] = {}
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._on_device_failure: Callable[[str], None] | None = None
        self._load = LoadWindow(0.0)  # worker side
        self._device_failure: str | None = None  # worker side: set once, ends the stepping
        self._batch_window_s = 0.0

    @property
    def engine(self) -> StreamingEngine:
        """For its immutable facts (sample rate, chunk sizes); never call its methods from here."""
        if self._engine is None:
            raise RuntimeError("engine not started")
        return self._engine

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self, build: Callable[[], StreamingEngine], warmup_batch: int = 0,
                    on_device_failure: Callable[[str], None] | None = None,
                    load_log_interval_s: float = 0.0, batch_window_s: float = 0.0) -> StreamingEngine:
        """Build the engine on the worker thread, warm it up, and start stepping.

        ``warmup_batch``: streams per chunk size in the warm-up's batched round; 0 = the engine's
        batch limit on CUDA, none elsewhere (see :meth:`_warm_up`). ``on_device_failure(reason)``
        runs on the event loop once the device stopped running work; every stream has failed by
        then and the runner steps no more. ``load_log_interval_s``: how often an ``engine load``
        event sums up the steps (0: never). ``batch_window_s``: when audio wakes an idle engine, how
        long it waits for more before stepping, so that streams whose chunks complete nearly together
        share one step (0: it steps at once)."""
        self._on_device_failure = on_device_failure
        self._engine = await self._call(build)
        await self._call(self._warm_up, warmup_batch)
        freeze_long_lived_objects()
        self._load = LoadWindow(load_log_interval_s)
        self._batch_window_s = batch_window_s
        self._pump_task = asyncio.create_task(self._pump(), name="engine-pump")
        return self._engine

    def _warm_up(self, batch: int) -> None:
        """Encoder CUDA graphs for every batch size, then per chunk size one short stream and a
        batch of ``batch`` streams, so that the first clients do not pay for captures and lazy
        inits. On CUDA the batch defaults to ``max_batch``: NeMo's CUDA-graph decoder captures
        its graphs again whenever a batch outgrows the largest it has seen, and the caching
        allocator grows likewise, so without it the first steps of a burst of clients stall."""
        engine = self.engine
        started = time.monotonic()
        if captured := engine.capture_encoder_graphs():
            log.info("encoder CUDA graphs captured", graphs=captured, seconds=round(time.monotonic() - started, 1))
        if batch == 0:
            batch = engine.max_batch if engine.device.type == "cuda" else 1
        batch = min(batch, engine.max_batch, engine.max_streams)
        noise = np.random.default_rng(0).normal(0.0, 1e-3, int(WARMUP_SECONDS * engine.sample_rate))
        noise = noise.astype(np.float32)
        seconds, largest = {}, 0
        for size in engine.att_context_sizes:
            started = time.monotonic()
            largest = max(largest, self._warm_up_streams(size, 1, noise))
            if batch > 1:  # a first chunk and two more: the batch's first and steady shapes
                largest = max(largest, self._warm_up_streams(size, batch, noise[: 3 * engine.chunk_samples(size)]))
            seconds[str(list(size))] = round(time.monotonic() - started, 2)
        if overwritten := overwritten_byte_objects():  # the server could parse no request (one was b" ")
            raise RuntimeError(f"the warm-up overwrote CPython's shared one-byte objects {overwritten} "
                               "(value: byte now held): native code wrote into an immutable bytes object")
        log.info("engine warmed up", seconds=seconds, largest_batch=largest)

    def _warm_up_streams(self, size: tuple[int, int], count: int, audio: np.ndarray) -> int:
        """``count`` streams of ``audio`` at one chunk size, stepped until they finish; the
        largest number of streams one step served."""
        engine = self.engine
        ids = [engine.open_stream(StreamOptions(att_context_size=size)) for _ in range(count)]
        for stream_id in ids:
            engine.push_audio(stream_id, audio)
            engine.end_stream(stream_id)
        updates: list[StreamUpdate] = []
        largest = 0
        while any(stream_id in engine.streams for stream_id in ids):  # until finished, or dropped after a failure
            updates += engine.step()
            largest = max(largest, engine.last_stats.streams)
        if failure := next((u.failure for u in updates if u.failure is not None), None):
            raise RuntimeError(f"warm-up at att_context_size {list(size)} failed: {failure}")
        return largest

    async def stop(self) -> None:
        """Stop stepping and let the worker thread finish what it is doing."""
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    # ------------------------------------------------------------------ commands
    async def open(self, options: StreamOptions, sink: Sink) -> int:
        """Open a stream whose updates go to ``sink``; raises the engine's errors, and
        :class:`EngineFailure` once the device has failed."""
        stream_id = await self._call(self._open, options)
        self._sinks[stream_id] = sink
        return stream_id

    def _open(self, options: StreamOptions) -> int:
        if self._device_failure is not None:  # nothing steps any more: the stream would wait forever
            raise EngineFailure(f"the device failed: {self._device_failure}")
        self._apply_inbox()  # a departed session's close frees its slot first
        return self.engine.open_stream(options)

    def _submit(self, method: Callable[..., None], stream_id: int, *args: Any) -> None:
        self._inbox.append((method, stream_id, args))
        self._wake.set()

    def push(self, stream_id: int, samples: np.ndarray) -> None:
        """Queue float32 mono audio at the engine's rate (already validated by the session)."""
        self._submit(self.engine.push_audio, stream_id, samples)

    def end(self, stream_id: int) -> None:
        """No more audio: the last update (``finished``) arrives on the sink after its final."""
        self._submit(self.engine.end_stream, stream_id)

    def finalize(self, stream_id: int) -> None:
        self._submit(self.engine.finalize, stream_id)

    def close(self, stream_id: int) -> None:
        """Abandon a stream (no final); harmless for a stream that already finished."""
        self._sinks.pop(stream_id, None)
        self._submit(self.engine.close_stream, stream_id)

    # ------------------------------------------------------------------ the worker's cycle
    def _apply_inbox(self) -> bool:
        """On the worker: run queued commands in order; whether there were any."""
        applied = bool(self._inbox)
        while self._inbox:
            method, stream_id, args = self._inbox.popleft()
            if stream_id in self._failed:
                continue
            try:
                method(stream_id, *args)
            except Exception as exc:  # a bug: the session validated everything it sent
                log.exception("engine command failed", command=method.__name__, stream_id=stream_id)
                self._failed[stream_id] = f"{method.__name__}: {type(exc).__name__}: {exc}"
                self.engine.close_stream(stream_id)
        return applied

    def _cycle(self) -> _Cycle | None:
        """On the worker: apply queued commands, then step if there is work; ``None`` when idle."""
        engine = self.engine
        applied = self._apply_inbox()
        failed, self._failed = self._failed, {}
        if not engine.has_work():
            return _Cycle([], 0.0, failed) if applied or failed else None
        try:
            updates = engine.step()
        except Exception as exc:  # the device is gone, or a bug in the step's scheduling: all streams
            device_failed = isinstance(exc, DeviceFailedError)
            if device_failed:
                self._device_failure = str(exc)
                log.error("device failed; dropping every stream", error=str(exc))
            else:
                log.exception("engine step failed; dropping every stream")
            for stream_id in engine.close_all_streams(free_slots=not device_failed):
                failed[stream_id] = f"step: {type(exc).__name__}: {exc}"
            return _Cycle([], 0.0, failed)
        self._load.add(engine.last_stats)
        if self._load.due():
            log.info("engine load", **self._load.summary())
            self._load = LoadWindow(self._load.interval_s)
        failed.update({u.stream_id: f"step: {u.failure}" for u in updates if u.failure is not None})
        return _Cycle([u for u in updates if u.failure is None], engine.last_stats.total_s, failed)

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            if self._batch_window_s:  # the engine was idle: let audio arriving together share a step
                await asyncio.sleep(self._batch_window_s)
            self._wake.clear()
            while (cycle := await self._call(self._cycle)) is not None:
                self._deliver(cycle)
                if self._device_failure is not None:
                    if self._on_device_failure is not None:
                        self._on_device_failure(self._device_failure)
                    return

    def _deliver(self, cycle: _Cycle) -> None:
        for update in cycle.updates:
            sink = self._sinks.get(update.stream_id)
            if sink is not None:
                sink.put_nowait(Delivery(update, cycle.step_seconds))
            if update.finished:
                self._sinks.pop(update.stream_id, None)
        for stream_id, reason in cycle.failed.items():
            sink = self._sinks.pop(stream_id, None)
            if sink is not None:
                sink.put_nowait(EngineFailure(reason))
