"""The protocol-neutral session core: one connection, one engine stream, whatever the wire protocol.

A session asks its adapter (:mod:`streamd.server.protocols`) what each client frame means — start
the stream with a config, audio, finalize, end, a reply — and what to send for each of its
stream's events, while it owns what every protocol shares: the engine stream, decoding and
resampling the audio, the limits (frame size, idle time, session length), and the end. However
the stream ends — the client's end of audio, a client error, idle timeout, the session length
limit, server shutdown — a stream that has audio is ended in the engine and its final goes out
before anything else (no transcript is lost); a client that vanishes has its stream dropped at
once. Bad input never reaches the engine: every frame is checked here or by the adapter first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import time
from collections import deque
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np
from prometheus_client import Counter, Histogram
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from streamd.audio import AudioError, PcmFormat, StreamResampler
from streamd.config import ServeConfig
from streamd.engine.runner import Delivery, EngineRunner
from streamd.engine.stream import StreamOptions, Utterance
from streamd.engine.worker import EngineFailure
from streamd.log import get_logger
from streamd.server.metrics import Metrics
from streamd.server.protocols.base import Adapter
from streamd.server.wire import (
    END_REASONS,
    Action,
    Audio,
    End,
    EndStream,
    ErrorCode,
    Event,
    Final,
    Finalize,
    ModelInfo,
    Partial,
    ProtocolError,
    Send,
    SessionConfig,
    Start,
    Started,
    Summary,
)

log = get_logger(__name__)
T = TypeVar("T")
# The server ends these streams itself: each gets its final even without audio (as after the
# client's end), so that no protocol's client waits for one.
SERVER_ENDINGS = (ErrorCode.SHUTTING_DOWN, ErrorCode.INTERNAL_ERROR)


def _uncancel(task: asyncio.Task | None) -> bool:
    """After a cancellation the session asked for: whether another is still pending (Python
    3.11+ counts them; on 3.10 none can be told apart)."""
    uncancel = getattr(task, "uncancel", None)
    return uncancel is not None and uncancel() > 0


class Session:
    """Serves one connection through its adapter; :meth:`run` returns when the connection is finished with."""

    def __init__(self, session_id: str, connection: ServerConnection, adapter: Adapter, runner: EngineRunner,
                 model: ModelInfo, settings: ServeConfig, metrics: Metrics) -> None:
        self.id = session_id
        self.connection = connection
        self.adapter = adapter
        self.runner = runner
        self.model = model
        self.settings = settings
        self.metrics = metrics
        self.log = log.bind(session_id=self.id)
        self._writer: asyncio.Task[None] | None = None
        # Waiting for a client frame is interrupted by callbacks, not raced against each frame
        # (a task and an asyncio.wait per frame were a fifth of the event loop's CPU at 20 ms
        # frames): shutdown, a stopped writer and the idle timer set the interruption and cancel
        # the session's task while it waits; _next_message raises the interruption.
        self._task: asyncio.Task | None = None
        self._interruption: BaseException | None = None
        self._waiting: str | None = None  # what the task awaits: "client" (a frame) or "engine" (backlog)
        self._wait_started = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._deadlines: list[asyncio.TimerHandle] = []  # the config deadline, the wall-clock limit
        self._progress = asyncio.Event()  # the engine reported this stream's progress
        self._slow_reader = False
        self._slow_close: asyncio.Future[None] | None = None
        self._backlog_pauses = 0
        self._updates: asyncio.Queue[Delivery | EngineFailure] = asyncio.Queue()
        self.config: SessionConfig | None = None
        self._format: PcmFormat | None = None
        self._resampler: StreamResampler | None = None
        self._stream_id: int | None = None
        self._stream_done = False
        self._audio_ended = False
        self._end_reason = "eof"
        self._samples_in = 0  # sample frames received, at the client's rate
        self._samples_pushed = 0  # samples handed to the engine, at the model's rate
        self._processed_seconds = 0.0  # audio the engine's encoder has consumed
        # (samples pushed so far, when the frame that brought them arrived), for update latency
        self._arrivals: deque[tuple[int, float]] = deque()
        self._audio_counter: Counter | None = None  # the metrics' series of this session's chunk size
        self._latency: Histogram | None = None
        self._utterances = 0
        self._audio_seconds = 0.0
        # Streams the session ended before its current one (EndStream): what they counted.
        self._utterance_base = 0
        self._stream_base_s = 0.0
        self._stream_ending = False  # the current stream is being ended by EndStream
        self._steps = 0
        self._step_seconds = 0.0

    def end(self, reason: ProtocolError) -> None:
        """The server ends the session (shutdown, or its own failure): the stream's final, then
        ``reason`` as the protocol says it."""
        self._interrupt(reason)

    async def run(self) -> None:
        started = time.monotonic()
        self.log.info("session open", protocol=self.adapter.name, peer=str(self.connection.remote_address))
        outcome = "cancelled"  # by the server when shutdown_timeout_s ran out
        self._task = asyncio.current_task()
        s = self.settings
        loop = asyncio.get_running_loop()
        self._arm_idle_timer(s.idle_timeout_s)
        self.metrics.sessions_active.labels(self.adapter.name).inc()
        self._deadlines = [
            loop.call_later(s.config_timeout_s, self._check_started),
            loop.call_later(s.max_session_wall_s, self._interrupt, ProtocolError(
                ErrorCode.MAX_SESSION, f"the session lasted max_session_wall_s={s.max_session_wall_s:g} s")),
        ]
        try:
            outcome = await self._serve()
        except ConnectionClosed:
            outcome = "slow_reader" if self._slow_reader else "client_gone"
        except Exception:
            outcome = "internal_error"
            self.log.exception("session failed")
            with contextlib.suppress(ConnectionClosed):
                await self._close(ProtocolError(ErrorCode.INTERNAL_ERROR, "internal server error"))
        finally:
            for timer in [self._idle_timer, *self._deadlines]:
                if timer is not None:
                    timer.cancel()
            if self._writer is not None:
                self._writer.cancel()
            if self._stream_id is not None and not self._stream_done:
                self.runner.close(self._stream_id)
            self.metrics.sessions_active.labels(self.adapter.name).dec()
            self.metrics.sessions_ended.labels(self.adapter.name, outcome).inc()
            self.log.info(
                "session closed", protocol=self.adapter.name, outcome=outcome,
                audio_seconds=round(self._samples_in / self.config.sample_rate, 3) if self.config else 0.0,
                utterances=self._utterances, steps=self._steps, backlog_pauses=self._backlog_pauses,
                mean_step_ms=round(1000 * self._step_seconds / self._steps, 2) if self._steps else None,
                duration_s=round(time.monotonic() - started, 3),
            )

    # ------------------------------------------------------------------ phases
    async def _serve(self) -> str:
        """The whole conversation; returns the outcome for the log."""
        ending: ProtocolError | None = None
        try:
            await self._apply(self.adapter.opening())
            while not self._audio_ended:
                await self._apply(self.adapter.receive(await self._next_message()))
        except ProtocolError as exc:
            ending = exc
            self._end_reason = END_REASONS.get(exc.code, "error")
        if self._stream_id is not None and (ending is None or ending.code in SERVER_ENDINGS or self._samples_in):
            self._end_stream()
            await self._writer  # returns after the last final went out
            self._stream_done = True
        await self._close(ending)
        return "eof" if ending is None else ending.code.value

    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Audio):
                self._push(action.data)
                await self._within_backlog()
            elif isinstance(action, Send):
                await self._send(action.frame)
            elif isinstance(action, Start):
                await self._start(action.config)
            elif isinstance(action, Finalize):
                self.runner.finalize(self._open_stream())
            elif isinstance(action, EndStream):
                await self._finish_stream()
            elif isinstance(action, End):
                self._audio_ended = True

    async def _start(self, config: SessionConfig) -> None:
        """Open the engine stream, tell the adapter, and start forwarding the stream's events."""
        if self._stream_id is not None:
            raise RuntimeError(f"{self.adapter.name} adapter started a second stream")
        self.config = config
        self.log.info("session config", **config.to_dict())
        self._samples_pushed, self._processed_seconds, self._stream_ending = 0, 0.0, False
        self._arrivals.clear()
        self._format = config.pcm_format
        self._resampler = StreamResampler(config.sample_rate, self.model.sample_rate)
        options = StreamOptions(config.att_context_size, config.word_timestamps, config.endpointing)
        self._stream_id = await self.runner.open(options, self._updates)
        self._audio_counter = self.metrics.audio_seconds.labels(str(config.chunk_ms))
        self._latency = self.metrics.update_latency.labels(str(config.chunk_ms))
        await self._send_event(Started(config))
        self._writer = asyncio.create_task(self._forward_updates(), name=f"session-{self.id}-writer")
        self._writer.add_done_callback(self._writer_stopped)

    async def _finish_stream(self) -> None:
        """End the stream and wait for its last final; later streams count on from it."""
        if self._stream_id is None:
            return
        self._stream_ending = True  # its writer's end is not the session's
        self._end_stream()
        assert self._writer is not None
        await self._writer
        self._stream_id, self._writer = None, None
        self._utterance_base = self._utterances
        self._stream_base_s += self._samples_pushed / self.model.sample_rate

    def _open_stream(self) -> int:
        if self._stream_id is None:
            raise RuntimeError(f"{self.adapter.name} adapter sent audio or finalize before starting the stream")
        return self._stream_id

    def _push(self, data: bytes) -> None:
        """Decode, cap at ``max_session_s``, resample and hand to the engine."""
        stream_id = self._open_stream()
        assert self._format is not None and self._resampler is not None
        try:
            samples = self._format.decode(data)
        except AudioError as exc:
            raise ProtocolError(ErrorCode.BAD_AUDIO, str(exc)) from None
        room = int(self.settings.max_session_s * self._format.sample_rate) - self._samples_in
        over = len(samples) > room
        samples = samples[: max(room, 0)]
        self._samples_in += len(samples)
        resampled = self._resampler.process(samples)
        if len(resampled):
            self._samples_pushed += len(resampled)
            self._arrivals.append((self._samples_pushed, time.monotonic()))
            assert self._audio_counter is not None
            self._audio_counter.inc(len(resampled) / self.model.sample_rate)
            self.runner.push(stream_id, resampled)
        if over:
            limit = self.settings.max_session_s
            raise ProtocolError(ErrorCode.MAX_SESSION, f"reached max_session_s={limit:g} s of audio")

    def _end_stream(self) -> None:
        """Flush the resampler and mark the end: the engine then emits the last final."""
        assert self._resampler is not None and self._stream_id is not None
        tail = self._resampler.process(np.zeros(0, np.float32), last=True)
        if len(tail):
            self.runner.push(self._stream_id, tail)
        self.runner.end(self._stream_id)

    async def _close(self, ending: ProtocolError | None) -> None:
        """The adapter's last frames, then the close it asks for."""
        if ending is not None:
            self.log.info("session error", code=ending.code.value, message=ending.message)
        closing = self.adapter.closing(ending, Summary(self.id, self._audio_seconds, self._utterances))
        for frame in closing.frames:
            await self._send(frame)
        await self.connection.close(closing.code, closing.reason)

    # ------------------------------------------------------------------ plumbing
    async def _send(self, frame: str | bytes) -> None:
        """Send, or close a client that has not taken a message for ``send_timeout_s``: its
        unread messages would pile up in this server (a timer, not a task per message)."""
        timer = asyncio.get_running_loop().call_later(self.settings.send_timeout_s, self._close_slow_reader)
        try:
            await self.connection.send(frame)
        finally:
            timer.cancel()

    def _close_slow_reader(self) -> None:
        """The close frame queues behind what the client did not read; websockets gives up on the
        close handshake after its close timeout and drops the connection. Both sends then fail."""
        if not self._slow_reader:
            self._slow_reader = True
            limit = self.settings.send_timeout_s
            self.log.info("session error", code=ErrorCode.SLOW_READER.value,
                          message=f"the client took no message for send_timeout_s={limit:g} s")
            code = ErrorCode.SLOW_READER
            self._slow_close = asyncio.ensure_future(self.connection.close(code.close_code, code.value))

    async def _next_message(self) -> str | bytes:
        """The next client frame, size-checked; raises the interruption (idle timeout, shutdown,
        or what stopped the writer: client gone, engine failure) that ended the wait."""
        message = await self._interruptible(self.connection.recv(), "client")  # safe to cancel: nothing is lost
        limits = self.settings
        size = len(message) if isinstance(message, bytes) else len(message.encode())
        if size > limits.max_message_bytes:
            raise ProtocolError(ErrorCode.MESSAGE_TOO_BIG,
                                f"{size}-byte frame > max_message_bytes={limits.max_message_bytes}")
        return message

    async def _interruptible(self, waited: Awaitable[T], what: str) -> T:
        """Await ``waited`` unless or until an interruption comes, then raise it."""
        if self._interruption is None:
            self._wait_started = asyncio.get_running_loop().time()
            self._waiting = what
            try:
                return await waited
            except asyncio.CancelledError:
                if self._interruption is None or _uncancel(self._task):
                    raise  # the server cancels the session (shutdown_timeout_s)
            finally:
                self._waiting = None
        elif inspect.iscoroutine(waited):
            waited.close()
        raise self._interruption

    async def _within_backlog(self) -> None:
        """While the audio the engine has not processed yet exceeds ``max_backlog_s``, stop reading
        the client: TCP flow control then slows a client that sends faster than the engine
        consumes, and nothing is dropped. Every step that processes the stream reports progress."""
        limit = self.settings.max_backlog_s
        if self.backlog_seconds() > limit:
            self._backlog_pauses += 1
        while self.backlog_seconds() > limit:
            self._progress.clear()
            await self._interruptible(self._progress.wait(), "engine")

    def _in_session(self, utterance: Utterance) -> Utterance:
        """A stream's utterance as the session counts it: numbered and timed from the session's
        start (after an adapter ended a stream and started another)."""
        base = self._stream_base_s
        if not self._utterance_base and not base:
            return utterance
        return dataclasses.replace(
            utterance, index=self._utterance_base + utterance.index, start=round(utterance.start + base, 3),
            end=round(utterance.end + base, 3),
            words=[dataclasses.replace(w, start=round(w.start + base, 3), end=round(w.end + base, 3))
                   for w in utterance.words])

    def backlog_seconds(self) -> float:
        """Audio received that the engine has not processed yet."""
        return self._samples_pushed / self.model.sample_rate - self._processed_seconds

    def _arrival(self, audio_seconds: float) -> float:
        """When the frame arrived that brought the stream to ``audio_seconds`` (what the engine
        had when it made an update); earlier frames are forgotten (updates only move forward)."""
        reached = round(audio_seconds * self.model.sample_rate)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < reached:
            self._arrivals.popleft()
        return self._arrivals[0][1] if self._arrivals else time.monotonic()

    def _check_started(self) -> None:
        if self.config is None:
            limit = self.settings.config_timeout_s
            self._interrupt(ProtocolError(ErrorCode.CONFIG_TIMEOUT, f"no config within config_timeout_s={limit:g} s"))

    def _interrupt(self, reason: BaseException) -> None:
        """End the session's reading with ``reason`` (the first reason wins)."""
        if self._interruption is None:
            self._interruption = reason
            if self._waiting is not None and self._task is not None:
                self._task.cancel()

    def _writer_stopped(self, writer: asyncio.Task[None]) -> None:
        if not writer.cancelled() and not (self._stream_ending and writer.exception() is None):
            # After the last final this interrupts nothing: no frame is read after the end.
            self._interrupt(writer.exception() or RuntimeError("update writer stopped before the stream ended"))

    def _arm_idle_timer(self, delay: float) -> None:
        self._idle_timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        """Interrupt a wait for a client frame that has lasted ``idle_timeout_s``, else check again
        when the current wait would reach it (waiting for the engine is not the client's idleness)."""
        idle = self.settings.idle_timeout_s
        waiting = self._waiting == "client"
        waited = asyncio.get_running_loop().time() - self._wait_started
        if waiting and waited >= idle:
            self._interrupt(ProtocolError(ErrorCode.IDLE_TIMEOUT, f"no message for {idle:g} s"))
        else:
            self._arm_idle_timer(idle - waited if waiting else idle)

    async def _send_event(self, event: Event) -> None:
        for frame in self.adapter.event(event):
            await self._send(frame)

    async def _forward_updates(self) -> None:
        """Engine updates -> the adapter's partial and final frames, until the stream's last update."""
        assert self.config is not None
        while True:
            delivery = await self._updates.get()
            if isinstance(delivery, EngineFailure):
                raise delivery
            update = delivery.update
            self._steps += 1
            self._step_seconds += delivery.step_seconds
            self._audio_seconds = self._stream_base_s + update.audio_seconds
            self._processed_seconds = update.processed_seconds
            self._progress.set()
            arrived = self._arrival(update.audio_seconds)
            if self._latency is not None and ((update.partial is not None and self.config.partials) or update.finals):
                self._latency.observe(time.monotonic() - arrived)  # the update goes out now
            if update.partial is not None and self.config.partials:
                await self._send_event(Partial(self._utterances, update.partial, update.partial_tokens,
                                               update.partial_probabilities, self._audio_seconds))
            for utterance in update.finals:
                last = update.finished and utterance is update.finals[-1]
                reason = self._end_reason if last and not self._stream_ending else utterance.reason
                in_session = self._in_session(utterance)
                await self._send_event(Final(in_session, reason, self._audio_seconds))
                self._utterances = in_session.index + 1
            if update.finished:
                return
