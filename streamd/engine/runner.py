"""The bridge between asyncio sessions and the single-threaded :class:`StreamingEngine`.

The engine lives with an :class:`~streamd.engine.worker.EngineWorker` on one worker thread
(default) or in a process of its own (``engine_process=true``,
:mod:`streamd.engine.engine_process`); either way every engine call runs there, one at a time,
so the engine needs no locks and the event loop never waits for the model. Sessions do not wait
for the worker either: ``push``/``end``/``finalize``/``close`` go into an inbox (in order) that
goes to the worker with its next cycle, so however long a step takes, all audio that arrived
meanwhile joins the next one. A pump task on the event loop keeps the worker cycling while
there is work and puts each :class:`StreamUpdate` on the queue of the session that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streamd.engine.engine import StreamingEngine
from streamd.engine.engine_process import EngineProcessDied, ProcessWorker
from streamd.engine.stream import StreamOptions, StreamUpdate
from streamd.engine.worker import (
    Command,
    Cycle,
    EngineFacts,
    EngineFailure,
    EngineWorker,
    StreamCommand,
    WorkerCall,
    freeze_long_lived_objects,
)
from streamd.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One stream's update from one step, with the step's duration (for per-session stats)."""

    update: StreamUpdate
    step_seconds: float


Sink = asyncio.Queue[Delivery | EngineFailure]


class Worker(Protocol):
    """Where the :class:`EngineWorker` runs: calls by method name, one at a time, in order."""

    async def call(self, method: WorkerCall, *args: Any) -> Any: ...

    def on_exit(self, callback: Callable[[], None]) -> None: ...

    async def stop(self) -> None: ...


class ThreadWorker:
    """The :class:`EngineWorker` on one thread of this process."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="streamd-engine")
        self._worker = EngineWorker()

    async def call(self, method: WorkerCall, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, getattr(self._worker, method.value),
                                                                *args)

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Nothing to watch: a thread does not end on its own (a failure surfaces in a call)."""

    async def stop(self) -> None:
        """Let the worker thread finish what it is doing."""
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)


class EngineRunner:
    """Runs a :class:`StreamingEngine` on its worker; all methods are for the event loop."""

    def __init__(self) -> None:
        self._worker: Worker | None = None
        self._inbox: list[Command] = []
        self._sinks: dict[int, Sink] = {}
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._on_device_failure: Callable[[str], None] | None = None
        self._on_fault: Callable[[str], None] | None = None
        self._on_step: Callable[[float, int], None] | None = None
        self._faulted = False  # a cycle or its delivery raised once: a second time fails every stream
        self._batch_window_s = 0.0

    async def start(self, build: Callable[[], StreamingEngine], warmup_batch: int = 0,
                    on_device_failure: Callable[[str], None] | None = None,
                    on_fault: Callable[[str], None] | None = None,
                    on_step: Callable[[float, int], None] | None = None,
                    load_log_interval_s: float = 0.0, batch_window_s: float = 0.0,
                    engine_process: bool = False) -> EngineFacts:
        """Build the engine on its worker, warm it up, and start stepping.

        ``warmup_batch``: streams per chunk size in the warm-up's batched round; 0 = the engine's
        batch limit on CUDA, none elsewhere. ``on_device_failure(reason)`` runs on the event loop
        once the device (or the engine's process) stopped running work; every stream has failed
        by then and the runner steps no more. ``on_fault(reason)`` runs once when a cycle or its
        delivery raised (a bug): the runner goes on stepping so that the server can end its
        sessions with their finals, and fails every stream if that happens again.
        ``on_step(seconds, streams)`` runs after every step (for metrics).
        ``load_log_interval_s``: how often an ``engine load`` event sums up the steps (0: never).
        ``batch_window_s``: when audio wakes an idle engine, how long it waits for more before
        stepping, so that streams whose chunks complete nearly together share one step (0: it
        steps at once). ``engine_process``: run the engine in a child process (``build`` must
        then pickle: a module-level function or a partial)."""
        self._on_device_failure = on_device_failure
        self._on_fault = on_fault
        self._on_step = on_step
        self._worker = ProcessWorker() if engine_process else ThreadWorker()
        facts: EngineFacts = await self._worker.call(WorkerCall.START, build, warmup_batch, load_log_interval_s)
        if engine_process:  # this process's own objects; a worker thread has frozen them already
            freeze_long_lived_objects()
        self._worker.on_exit(self._wake.set)  # the pump's next call then reports the engine gone
        self._batch_window_s = batch_window_s
        self._pump_task = asyncio.create_task(self._pump(), name="engine-pump")
        return facts

    async def stop(self) -> None:
        """Stop stepping and let the worker finish what it is doing."""
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        if self._worker is not None:
            await self._worker.stop()

    # ------------------------------------------------------------------ commands
    async def open(self, options: StreamOptions, sink: Sink) -> int:
        """Open a stream whose updates go to ``sink``; raises the engine's errors, and
        :class:`EngineFailure` once the device has failed."""
        if self._worker is None:
            raise RuntimeError("engine not started")
        stream_id: int = await self._worker.call(WorkerCall.OPEN, options, self._take_inbox())
        self._sinks[stream_id] = sink
        return stream_id

    def _submit(self, command: StreamCommand, stream_id: int, *args: Any) -> None:
        self._inbox.append((command, stream_id, args))
        self._wake.set()

    def _take_inbox(self) -> list[Command]:
        """The queued commands, less those for streams already gone (failed, or finished): a
        session sends on until it has read its failure, and the engine would refuse each as a
        command for no open stream."""
        commands = [c for c in self._inbox if c[1] in self._sinks or c[0] is StreamCommand.CLOSE]
        self._inbox = []
        return commands

    def push(self, stream_id: int, samples: np.ndarray) -> None:
        """Queue float32 mono audio at the engine's rate (already validated by the session)."""
        self._submit(StreamCommand.PUSH_AUDIO, stream_id, samples)

    def end(self, stream_id: int) -> None:
        """No more audio: the last update (``finished``) arrives on the sink after its final."""
        self._submit(StreamCommand.END, stream_id)

    def finalize(self, stream_id: int) -> None:
        self._submit(StreamCommand.FINALIZE, stream_id)

    def close(self, stream_id: int) -> None:
        """Abandon a stream (no final); harmless for a stream that already finished."""
        self._sinks.pop(stream_id, None)
        self._submit(StreamCommand.CLOSE, stream_id)

    # ------------------------------------------------------------------ the worker's cycles
    async def _pump(self) -> None:
        assert self._worker is not None
        while True:
            await self._wake.wait()
            if self._batch_window_s:  # the engine was idle: let audio arriving together share a step
                await asyncio.sleep(self._batch_window_s)
            self._wake.clear()
            while True:
                try:
                    cycle: Cycle | None = await self._worker.call(WorkerCall.CYCLE, self._take_inbox())
                    if cycle is None:
                        break
                    self._deliver(cycle)
                    if cycle.streams and self._on_step is not None:
                        self._on_step(cycle.step_seconds, cycle.streams)
                except EngineProcessDied as exc:  # like a failed device: no stream can go on
                    cycle = self._fail_every_stream(str(exc))
                except Exception as exc:  # a bug in a cycle or its delivery: its updates may be lost
                    cycle = self._fault(exc)
                if cycle.device_failure is not None:
                    if self._on_device_failure is not None:
                        self._on_device_failure(cycle.device_failure)
                    return

    def _fault(self, exc: Exception) -> Cycle:
        """The first fault is reported (the server then ends every session) and stepping goes on,
        so that streams get their finals; a second fails every stream."""
        reason = f"engine cycle failed: {type(exc).__name__}: {exc}"
        log.exception("engine cycle failed", again=self._faulted)  # called while handling exc
        if self._faulted:
            return self._fail_every_stream(reason)
        self._faulted = True
        if self._on_fault is not None:
            self._on_fault(reason)
        return Cycle([], 0.0, {})

    def _fail_every_stream(self, reason: str) -> Cycle:
        cycle = Cycle([], 0.0, dict.fromkeys(self._sinks, reason), reason)
        self._deliver(cycle)
        return cycle

    def _deliver(self, cycle: Cycle) -> None:
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
