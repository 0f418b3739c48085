"""One WebSocket connection, one engine stream: the session state machine of docs/protocol.md.

A session reads the ``config``, answers ``ready``, then turns binary frames into model-rate
audio (decode, down-mix, resample) for the engine while a writer task forwards the engine's
updates as ``partial``/``final`` messages. However the stream ends — client ``eof``, a client
error, idle timeout, the session length limit, server shutdown — a stream that has audio is
ended in the engine and its ``final`` is sent before anything else (no transcript is lost);
a client that vanishes has its stream dropped at once. Bad input never reaches the engine:
every frame is checked here first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from streamd import protocol
from streamd.audio import AudioError, PcmFormat, StreamResampler
from streamd.config import ServeConfig
from streamd.engine.runner import Delivery, EngineRunner
from streamd.engine.stream import StreamOptions
from streamd.engine.worker import EngineFailure
from streamd.log import get_logger
from streamd.protocol import ErrorCode, ModelInfo, ProtocolError, SessionConfig

log = get_logger(__name__)


def _uncancel(task: asyncio.Task | None) -> bool:
    """After a cancellation the session asked for: whether another is still pending (Python
    3.11+ counts them; on 3.10 none can be told apart)."""
    uncancel = getattr(task, "uncancel", None)
    return uncancel is not None and uncancel() > 0


# The final's reason when the server ends a stream; client errors end it with "error".
END_REASONS = {
    ErrorCode.SHUTTING_DOWN: "shutdown",
    ErrorCode.IDLE_TIMEOUT: "idle_timeout",
    ErrorCode.MAX_SESSION: "max_session",
}


class Session:
    """Serves one connection; :meth:`run` returns when the connection is finished with."""

    def __init__(self, connection: ServerConnection, runner: EngineRunner, model: ModelInfo,
                 settings: ServeConfig) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.connection = connection
        self.runner = runner
        self.model = model
        self.settings = settings
        self.log = log.bind(session_id=self.id)
        self._writer: asyncio.Task[None] | None = None
        # Waiting for a client frame is interrupted by callbacks, not raced against each frame
        # (a task and an asyncio.wait per frame were a fifth of the event loop's CPU at 20 ms
        # frames): shutdown, a stopped writer and the idle timer set the interruption and cancel
        # the session's task while it waits; _next_message raises the interruption.
        self._task: asyncio.Task | None = None
        self._interruption: BaseException | None = None
        self._receiving = False
        self._wait_started = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._updates: asyncio.Queue[Delivery | EngineFailure] = asyncio.Queue()
        self.config: SessionConfig | None = None
        self._format: PcmFormat | None = None
        self._resampler: StreamResampler | None = None
        self._stream_id: int | None = None
        self._stream_done = False
        self._end_reason = "eof"
        self._samples_in = 0  # sample frames received, at the client's rate
        self._utterance = 0
        self._audio_seconds = 0.0
        self._steps = 0
        self._step_seconds = 0.0

    def shutdown(self) -> None:
        """Server shutdown: end the stream with a ``shutdown`` final, ``done``, close 1001."""
        self._interrupt(ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is shutting down"))

    async def run(self) -> None:
        started = time.monotonic()
        self.log.info("session open", peer=str(self.connection.remote_address))
        outcome = "cancelled"  # by the server when shutdown_timeout_s ran out
        self._task = asyncio.current_task()
        self._arm_idle_timer(self.settings.idle_timeout_s)
        try:
            outcome = await self._serve()
        except ConnectionClosed:
            outcome = "client_gone"
        except Exception:
            outcome = "internal_error"
            self.log.exception("session failed")
            with contextlib.suppress(ConnectionClosed):
                await self._send_error(ProtocolError(ErrorCode.INTERNAL_ERROR, "internal server error"))
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            if self._writer is not None:
                self._writer.cancel()
            if self._stream_id is not None and not self._stream_done:
                self.runner.close(self._stream_id)
            self.log.info(
                "session closed", outcome=outcome,
                audio_seconds=round(self._samples_in / self.config.sample_rate, 3) if self.config else 0.0,
                utterances=self._utterance, steps=self._steps,
                mean_step_ms=round(1000 * self._step_seconds / self._steps, 2) if self._steps else None,
                duration_s=round(time.monotonic() - started, 3),
            )

    # ------------------------------------------------------------------ phases
    async def _serve(self) -> str:
        """The whole conversation; returns the outcome for the log."""
        try:
            config = self.config = await self._configure()
        except ProtocolError as exc:
            await self._send_error(exc)
            return exc.code.value
        self._format = config.pcm_format
        self._resampler = StreamResampler(config.sample_rate, self.model.sample_rate)
        options = StreamOptions(config.att_context_size, config.word_timestamps, config.endpointing)
        self._stream_id = await self.runner.open(options, self._updates)
        await self.connection.send(protocol.ready(self.id, config, self.model))
        self._writer = asyncio.create_task(self._forward_updates(), name=f"session-{self.id}-writer")
        self._writer.add_done_callback(self._writer_stopped)
        try:
            await self._receive_audio()
            ending = None
        except ProtocolError as exc:
            ending = exc
            self._end_reason = END_REASONS.get(exc.code, "error")
        if ending is None or ending.code is ErrorCode.SHUTTING_DOWN or self._samples_in:
            self._end_stream()
            await self._writer  # returns after the last final went out
            self._stream_done = True
        if ending is None:
            await self.connection.send(protocol.done(self.id, self._audio_seconds, self._utterance))
            await self.connection.close(protocol.CLOSE_NORMAL)
            return "eof"
        if ending.code is ErrorCode.SHUTTING_DOWN:
            await self.connection.send(protocol.done(self.id, self._audio_seconds, self._utterance))
        await self._send_error(ending)
        return ending.code.value

    async def _configure(self) -> SessionConfig:
        message = await self._next_message()
        if isinstance(message, bytes):
            raise ProtocolError(ErrorCode.AUDIO_BEFORE_CONFIG, "send a config message before audio")
        parsed = protocol.parse_client_message(message)
        if parsed.type != "config":
            raise ProtocolError(ErrorCode.AUDIO_BEFORE_CONFIG, f"{parsed.type} before config")
        config = protocol.parse_config(parsed.fields, self.model)
        self.log.info("session config", **config.to_dict())
        return config

    async def _receive_audio(self) -> None:
        """Read until ``eof``; raises :class:`ProtocolError` for whatever else ends the stream."""
        assert self._stream_id is not None
        while True:
            message = await self._next_message()
            if isinstance(message, bytes):
                self._push(message)
                continue
            parsed = protocol.parse_client_message(message)
            if parsed.type == "eof":
                return
            if parsed.type == "config":
                raise ProtocolError(ErrorCode.BAD_CONFIG, "config may be sent only once")
            self.runner.finalize(self._stream_id)

    def _push(self, data: bytes) -> None:
        """Decode, cap at ``max_session_s``, resample and hand to the engine."""
        assert self._format is not None and self._resampler is not None and self._stream_id is not None
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
            self.runner.push(self._stream_id, resampled)
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

    # ------------------------------------------------------------------ plumbing
    async def _next_message(self) -> str | bytes:
        """The next client frame, size-checked; raises the interruption (idle timeout, shutdown,
        or what stopped the writer: client gone, engine failure) that ended the wait."""
        if self._interruption is None:
            self._wait_started = asyncio.get_running_loop().time()
            self._receiving = True
            try:
                message = await self.connection.recv()  # safe to cancel: nothing is lost
            except asyncio.CancelledError:
                if self._interruption is None or _uncancel(self._task):
                    raise  # the server cancels the session (shutdown_timeout_s)
            finally:
                self._receiving = False
        if self._interruption is not None:
            raise self._interruption
        limits = self.settings
        size = len(message) if isinstance(message, bytes) else len(message.encode())
        if size > limits.max_message_bytes:
            raise ProtocolError(ErrorCode.MESSAGE_TOO_BIG,
                                f"{size}-byte frame > max_message_bytes={limits.max_message_bytes}")
        return message

    def _interrupt(self, reason: BaseException) -> None:
        """End the session's reading with ``reason`` (the first reason wins)."""
        if self._interruption is None:
            self._interruption = reason
            if self._receiving and self._task is not None:
                self._task.cancel()

    def _writer_stopped(self, writer: asyncio.Task[None]) -> None:
        if not writer.cancelled():
            # After the last final this interrupts nothing: no frame is read after eof.
            self._interrupt(writer.exception() or RuntimeError("update writer stopped before the stream ended"))

    def _arm_idle_timer(self, delay: float) -> None:
        self._idle_timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        """Interrupt a wait for a client frame that has lasted ``idle_timeout_s``, else check again
        when the current wait would reach it."""
        idle = self.settings.idle_timeout_s
        waited = asyncio.get_running_loop().time() - self._wait_started
        if self._receiving and waited >= idle:
            self._interrupt(ProtocolError(ErrorCode.IDLE_TIMEOUT, f"no message for {idle:g} s"))
        else:
            self._arm_idle_timer(idle - waited if self._receiving else idle)

    async def _forward_updates(self) -> None:
        """Engine updates -> ``partial``/``final`` messages, until the stream's last update."""
        assert self.config is not None
        while True:
            delivery = await self._updates.get()
            if isinstance(delivery, EngineFailure):
                raise delivery
            update = delivery.update
            self._steps += 1
            self._step_seconds += delivery.step_seconds
            self._audio_seconds = update.audio_seconds
            if update.partial is not None and self.config.partials:
                await self.connection.send(protocol.partial(
                    self._utterance, update.partial, update.partial_tokens, update.audio_seconds))
            for utterance in update.finals:
                last = update.finished and utterance is update.finals[-1]
                reason = self._end_reason if last else utterance.reason
                await self.connection.send(protocol.final(utterance, reason, self.config.word_timestamps))
                self._utterance = utterance.index + 1
            if update.finished:
                return

    async def _send_error(self, exc: ProtocolError) -> None:
        self.log.info("session error", code=exc.code.value, message=exc.message)
        await self.connection.send(protocol.error(exc.code, exc.message))
        await self.connection.close(exc.code.close_code, exc.code.value)
