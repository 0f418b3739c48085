"""The engine's side of the runner: owns a :class:`StreamingEngine` and runs every call on it.

An :class:`EngineWorker` lives where the engine runs — the runner's worker thread, or a process
of its own (:mod:`streamd.engine.engine_process`) — and is driven by the event loop through three
calls: :meth:`~EngineWorker.start`, :meth:`~EngineWorker.open` and :meth:`~EngineWorker.cycle`.
Their arguments and results are plain data (:class:`Command` tuples, :class:`EngineFacts`,
:class:`Cycle`) so that they can cross a process boundary.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from streamd.engine.engine import DeviceFailedError, StreamingEngine
from streamd.engine.load import LoadWindow
from streamd.engine.stream import StreamOptions, StreamUpdate
from streamd.log import get_logger
from streamd.shims import overwritten_byte_objects

log = get_logger(__name__)

WARMUP_SECONDS = 2.0  # longer than the first chunk of the largest chunk size

class StreamCommand(str, Enum):
    """What a session asks of its stream: the :class:`StreamingEngine` method of that name."""

    PUSH_AUDIO = "push_audio"
    END = "end_stream"
    FINALIZE = "finalize"
    CLOSE = "close_stream"


class WorkerCall(str, Enum):
    """The :class:`EngineWorker` methods the runner calls, by name: a call may cross a process's pipe."""

    START = "start"
    OPEN = "open"
    CYCLE = "cycle"


# A session's command for its stream: what, which stream, its other arguments.
Command = tuple[StreamCommand, int, tuple[Any, ...]]
COMMAND_CALLS = frozenset({WorkerCall.OPEN, WorkerCall.CYCLE})  # the calls whose last argument is a list[Command]


def freeze_long_lived_objects() -> None:
    """Leave every object alive now out of Python's garbage collection (call once the model is
    loaded and warmed up). The model, NeMo's modules and what a warm-up created live as long as
    the process (~720k objects even with a small model): a full collection traverses them all,
    holding the GIL — 340 ms on the CPU, one within a 6 s run of 352 streams at 160 ms chunks,
    stalling the event loop and the engine together. Frozen, they are left out of it (5 ms)."""
    gc.collect()
    gc.freeze()


class EngineFailure(RuntimeError):
    """The engine raised for this stream (a bug), or the device or the engine process is gone;
    the stream is gone."""


@dataclass(frozen=True)
class EngineFacts:
    """What the event loop needs to know about the engine (it never touches the engine itself)."""

    sample_rate: int
    att_context_sizes: list[tuple[int, int]]
    frame_s: float
    architecture: str  # e.g. "tiny" (streamd's architectures) or "24x1024 EncDecRNNTBPEModel"
    device: str
    dtype: str


@dataclass
class Cycle:
    """What one worker cycle (commands, then at most one step) produced."""

    updates: list[StreamUpdate]
    step_seconds: float
    failed: dict[int, str]  # stream id -> why its command or the step failed
    device_failure: str | None = None  # set once the device stopped running work: no later cycle steps
    streams: int = 0  # streams the step ran (its batch), 0 when it did not step


class EngineWorker:
    """Owns the engine; every method runs where the engine lives, one call at a time."""

    def __init__(self) -> None:
        self._engine: StreamingEngine | None = None
        self._failed: dict[int, str] = {}  # streams whose command failed, not yet reported
        self._load = LoadWindow(0.0)
        self._device_failure: str | None = None  # set once, ends the stepping

    @property
    def engine(self) -> StreamingEngine:
        if self._engine is None:
            raise RuntimeError("engine not started")
        return self._engine

    def start(self, build: Callable[[], StreamingEngine], warmup_batch: int,
              load_log_interval_s: float) -> EngineFacts:
        """Build the engine, warm it up (see :meth:`_warm_up`), and freeze what lives on."""
        self._engine = build()
        self._warm_up(warmup_batch)
        freeze_long_lived_objects()
        self._load = LoadWindow(load_log_interval_s)
        engine = self.engine
        return EngineFacts(engine.sample_rate, list(engine.att_context_sizes), engine.frame_s, engine.architecture,
                           str(engine.device), str(engine.dtype).removeprefix("torch."))

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

    def open(self, options: StreamOptions, commands: list[Command]) -> int:
        """Apply ``commands`` (a departed session's close frees its slot first), then open a stream;
        raises the engine's errors, and :class:`EngineFailure` once the device has failed."""
        if self._device_failure is not None:  # nothing steps any more: the stream would wait forever
            raise EngineFailure(f"the device failed: {self._device_failure}")
        self._apply(commands)
        return self.engine.open_stream(options)

    def _apply(self, commands: list[Command]) -> None:
        """Run the sessions' commands in order; a failing one fails its stream alone."""
        for command, stream_id, args in commands:
            if stream_id in self._failed:
                continue
            try:
                getattr(self.engine, command.value)(stream_id, *args)
            except Exception as exc:  # a bug: the session validated everything it sent
                log.exception("engine command failed", command=command.value, stream_id=stream_id)
                self._failed[stream_id] = f"{command.value}: {type(exc).__name__}: {exc}"
                self.engine.close_stream(stream_id)

    def cycle(self, commands: list[Command]) -> Cycle | None:
        """Apply ``commands``, then step if there is work; ``None`` when there was nothing to do."""
        engine = self.engine
        self._apply(commands)
        failed, self._failed = self._failed, {}
        if not engine.has_work():
            return Cycle([], 0.0, failed) if commands or failed else None
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
            return Cycle([], 0.0, failed, self._device_failure)
        self._load.add(engine.last_stats)
        if self._load.due():
            log.info("engine load", **self._load.summary())
            self._load = LoadWindow(self._load.interval_s)
        failed.update({u.stream_id: f"step: {u.failure}" for u in updates if u.failure is not None})
        stats = engine.last_stats
        return Cycle([u for u in updates if u.failure is None], stats.total_s, failed, streams=stats.streams)
