"""The ``streamd serve`` process: listeners, HTTP probes, admission, sessions and shutdown.

The socket opens first, so ``/healthz`` answers while the model loads on the engine's worker;
``/readyz`` turns 200 once the engine is warm. Every WebSocket upgrade is admitted or refused
in ``process_request`` — before the handshake — so a full or not-yet-ready server answers
HTTP 503 with ``Retry-After`` instead of accepting and then closing (a full server lets a
protocol whose clients expect to hear it over the WebSocket, WhisperLive's ``WAIT``, upgrade
without admitting it). SIGTERM/SIGINT drain:
stop accepting, end every session's stream with a ``shutdown`` final, and exit 0. A device that
stops running work (a poisoned CUDA context) fails every stream, turns ``/readyz`` to
``failed`` and exits 1, for a supervisor to restart the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import signal
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import start_http_server
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from streamd.config import ServeConfig
from streamd.engine.engine import StreamingEngine
from streamd.engine.runner import EngineRunner
from streamd.log import get_logger
from streamd.oslimits import raise_open_files_limit
from streamd.server.access import Access, load_tokens
from streamd.server.metrics import CONTENT_TYPE, Metrics
from streamd.server.protocols.base import Adapter, dump
from streamd.server.protocols.deepgram import DeepgramAdapter
from streamd.server.protocols.native import NativeAdapter
from streamd.server.protocols.openai_realtime import OpenAIRealtimeAdapter
from streamd.server.protocols.sherpa import SherpaAdapter
from streamd.server.protocols.vosk import VoskAdapter
from streamd.server.protocols.whisperlive import WhisperLiveAdapter
from streamd.server.responses import respond, respond_json
from streamd.server.session import Session
from streamd.server.webpage import page_response
from streamd.server.wire import Connection, ErrorCode, ModelInfo, ProtocolError

log = get_logger(__name__)

# WebSocket frames up to this multiple of max_message_bytes reach the session, which answers
# with a message_too_big error; larger ones are cut off by websockets itself (close 1009).
FRAME_LIMIT_FACTOR = 4
# Frames websockets may hold for a session that is not reading (its audio over max_backlog_s):
# beyond this it stops reading the socket. Its default, 16, let each session that sends frames
# of max_message_bytes park 16 MiB while it waits for the engine (64 uploading sessions: +1.6
# GiB of RSS, against +0.6 GiB with 1; docs/reliability.md). A live client's frames are read as
# they come, and one socket read of small frames still parses them all: no cost to either.
RECEIVE_QUEUE_FRAMES = 1
RETRY_AFTER_S = 1  # a refused client's hint when to try again


@dataclass(frozen=True)
class Listener:
    """One listening port and the wire protocols it serves: by path on the main port, one
    protocol on each port of a protocol whose clients cannot choose a path."""

    name: str
    port: int
    routes: Callable[[str], type[Adapter]]  # the request path -> its protocol's adapter


# Protocols whose clients choose the path share the main port.
PATH_PROTOCOLS: dict[str, type[Adapter]] = {
    "/v1/realtime": OpenAIRealtimeAdapter,
    "/v1/listen": DeepgramAdapter,
}


# Protocols whose clients cannot choose a path: a listener each, on the port of its serve key
# (0 = off).
PORT_PROTOCOLS: dict[str, type[Adapter]] = {
    "whisperlive_port": WhisperLiveAdapter,
    "vosk_port": VoskAdapter,
    "sherpa_port": SherpaAdapter,
}


def main_routes(path: str) -> type[Adapter]:
    """The main port: the protocols of :data:`PATH_PROTOCOLS` by path, every other path that is
    not an HTTP route the native protocol."""
    return PATH_PROTOCOLS.get(path.rstrip("/") or "/", NativeAdapter)


class Server:
    """Admission, probes, sessions and shutdown around one :class:`EngineRunner`, on every listener."""

    def __init__(self, settings: ServeConfig, stop: asyncio.Event) -> None:
        self.settings = settings
        self.runner = EngineRunner()
        self.state = "loading"  # -> ready -> draining, or -> failed
        self.model: ModelInfo | None = None
        self._stop = stop  # set by SIGTERM/SIGINT, or by a failed device
        # One admission count across all listeners: every session takes an engine stream slot.
        self._admitted: set[ServerConnection] = set()
        self._sessions: dict[Session, asyncio.Task[None]] = {}
        self.access = Access(load_tokens(settings.auth_tokens_file), settings.allowed_origins)
        self.metrics = Metrics(self._backlog_seconds)

    def listeners(self) -> list[Listener]:
        s = self.settings
        ports = [Listener(adapter.name, getattr(s, key), lambda _path, adapter=adapter: adapter)
                 for key, adapter in PORT_PROTOCOLS.items() if getattr(s, key)]
        return [Listener("main", s.port, main_routes), *ports]

    async def run(self) -> int:
        """Serve until the stop event is set (SIGTERM/SIGINT, or a failed device); return the exit code."""
        s = self.settings
        open_files, wanted = raise_open_files_limit(s.max_sessions)
        if open_files < wanted:
            log.warning("open-files limit below max_sessions; connections beyond it will fail",
                        limit=open_files, wanted=wanted)
        try:
            async with contextlib.AsyncExitStack() as listening:
                servers = [await listening.enter_async_context(self._listen(listener))
                           for listener in self.listeners()]
                if s.metrics_port:
                    listening.callback(self._serve_metrics(s.host, s.metrics_port))
                port = next(iter(servers[0].sockets)).getsockname()[1]
                stopping = asyncio.ensure_future(self._stop.wait())
                loading = asyncio.ensure_future(self._load())
                await asyncio.wait({stopping, loading}, return_when=asyncio.FIRST_COMPLETED)
                if not loading.done():
                    loading.cancel()  # stopped while loading; the runner's stop ends the worker
                elif (exc := loading.exception()) is not None:
                    stopping.cancel()
                    log.error("startup failed", error=f"{type(exc).__name__}: {exc}")
                    return 1
                else:
                    self.model = loading.result()
                    self.state = "ready"
                    log.info("ready", port=port, model=self.model.name, max_sessions=s.max_sessions)
                await stopping
                if self.state != "failed":
                    self.state = "draining"
                await self._drain(servers)
        finally:
            await self.runner.stop()
        log.info("stopped")
        return 1 if self.state == "failed" else 0

    @contextlib.asynccontextmanager
    async def _listen(self, listener: Listener) -> AsyncIterator[WebSocketServer]:
        s = self.settings
        # No permessage-deflate: PCM audio barely compresses, and deflating every frame cost the
        # event loop (and so the engine thread, through the GIL) more than any other protocol work.
        async with serve(partial(self._handle, listener), s.host, listener.port,
                         process_request=partial(self._process_request, listener),
                         max_size=FRAME_LIMIT_FACTOR * s.max_message_bytes, max_queue=RECEIVE_QUEUE_FRAMES,
                         compression=None, backlog=_listen_backlog(s.max_sessions),
                         ssl=tls_context(s.tls_cert, s.tls_key)
                         ) as ws_server:
            port = next(iter(ws_server.sockets)).getsockname()[1]
            log.info("listening", listener=listener.name, host=s.host, port=port)
            yield ws_server

    async def _load(self) -> ModelInfo:
        """Load, build and warm up the engine on its worker; describe the model for ``ready``."""
        s = self.settings
        engine = await self.runner.start(
            partial(build_engine, s), s.warmup_batch, on_device_failure=self._device_failed,
            on_fault=self._engine_faulted, on_step=self.metrics.observe_step,
            load_log_interval_s=s.load_log_interval_s, batch_window_s=s.batch_window_ms / 1000,
            engine_process=s.engine_process)
        model = ModelInfo.describe(Path(s.model).stem, engine.sample_rate, engine.att_context_sizes,
                                   engine.frame_s, s.default_chunk_ms)
        self.metrics.model.info({"name": model.name, "architecture": engine.architecture, "device": engine.device,
                                 "dtype": engine.dtype})
        return model

    def _device_failed(self, reason: str) -> None:
        """Every stream has failed and no later one could run: refuse sessions and exit with 1,
        so that a supervisor starts a fresh process (a poisoned CUDA context does not recover)."""
        log.error("device failed; stopping", reason=reason)
        self.state = "failed"
        self._stop.set()

    def _engine_faulted(self, reason: str) -> None:
        """A bug in the engine's stepping: nothing it produces can be trusted for long. End every
        session with its final (the engine still steps) and ``internal_error``, turn ``/readyz`` to
        ``failed`` and exit with 1, for a supervisor to start a fresh process."""
        log.error("engine failed; stopping", reason=reason)
        self.state = "failed"
        self._stop.set()

    async def _drain(self, servers: list[WebSocketServer]) -> None:
        """Stop accepting, let every session end its stream, cancel what outlives the timeout."""
        log.info("shutting down", sessions=len(self._sessions))
        for ws_server in servers:
            ws_server.close(close_connections=False)
        for session in self._sessions:
            session.end(self._ending())

        async def closed() -> None:
            await asyncio.gather(*(ws_server.wait_closed() for ws_server in servers))

        try:
            await asyncio.wait_for(closed(), self.settings.shutdown_timeout_s)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            log.warning("sessions outlived shutdown_timeout_s; cancelling", sessions=len(self._sessions))
            for task in self._sessions.values():
                task.cancel()
            await closed()

    # ------------------------------------------------------------------ connections
    async def _handle(self, listener: Listener, connection: ServerConnection) -> None:
        assert self.model is not None  # admission requires a loaded model
        request = connection.request
        assert request is not None
        session_id = uuid.uuid4().hex[:16]
        adapter = listener.routes(urlsplit(request.path).path)(
            Connection.from_request(session_id, request.path, dict(request.headers.raw_items())), self.model)
        if connection not in self._admitted:  # upgraded only to hear that the server is full
            await self._refuse_full(connection, adapter)
            return
        session = Session(session_id, connection, adapter, self.runner, self.model, self.settings, self.metrics)
        task = asyncio.current_task()
        assert task is not None
        self._sessions[session] = task
        if self.state in ("draining", "failed"):  # upgraded just as the drain began
            session.end(self._ending())
        try:
            await session.run()
        finally:
            del self._sessions[session]

    async def _refuse_full(self, connection: ServerConnection, adapter: Adapter) -> None:
        """A refusal for want of room (the server, or this address, at its limit) in the protocol's
        own words: the adapter answers the client's first frame (WhisperLive's options carry the
        uid its WAIT must echo)."""
        try:
            first_frame = await asyncio.wait_for(connection.recv(), self.settings.idle_timeout_s)
        except (ConnectionClosed, asyncio.TimeoutError):
            return  # returning closes the connection
        closing = adapter.full(first_frame, RETRY_AFTER_S)
        with contextlib.suppress(ConnectionClosed):
            for frame in closing.frames:
                await connection.send(frame)
        await connection.close(closing.code, closing.reason)

    def _ending(self) -> ProtocolError:
        """Why the server ends its sessions: shutdown, or a failure that makes it exit."""
        if self.state == "failed":
            return ProtocolError(ErrorCode.INTERNAL_ERROR, "the server failed and is restarting")
        return ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is shutting down")

    def _open_connections(self) -> int:
        """Admitted connections not yet closed (sessions, and upgrades still in handshake)."""
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        return len(self._admitted)

    def _readiness(self) -> str:
        if self.state == "ready" and self._open_connections() >= self.settings.max_sessions:
            return "full"
        return self.state

    def _process_request(self, listener: Listener, connection: ServerConnection, request: Request
                         ) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return respond_json(connection, HTTPStatus.OK, dump({"status": "ok"}))
        status = self._readiness()
        body = dump({"status": status, "sessions": self._open_connections(),
                     "max_sessions": self.settings.max_sessions, "token_required": self.access.requires_token})
        unavailable = HTTPStatus.SERVICE_UNAVAILABLE
        if path == "/readyz":
            return respond_json(connection, HTTPStatus.OK if status == "ready" else unavailable, body)
        if path == "/metrics":
            return self._metrics(connection, request)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            # The browser page on the main port (it speaks the native protocol); any other request
            # that is not an upgrade: None, and websockets answers 426.
            return page_response(connection, request) if listener.name == "main" else None
        if not self.access.origin_allowed(request.headers, "https" if self.settings.tls_cert else "http"):
            return self._refuse(connection, HTTPStatus.FORBIDDEN, "forbidden",
                                f"origin {request.headers.get('Origin')!r} is not allowed (allowed_origins)")
        if not self.access.authorized(request.path, request.headers):
            return self._unauthorized(connection)
        limit = self.settings.max_sessions_per_ip
        answers_full = listener.routes(path).answers_full
        if status == "ready" and limit and self._sessions_from(connection.remote_address[0]) >= limit:
            message = f"this address has max_sessions_per_ip={limit} sessions open"
            if answers_full:  # upgraded, not admitted: _handle refuses in the protocol's own words
                self._count_refusal(connection, "too_many_sessions", message)
                return None
            response = self._refuse(connection, HTTPStatus.TOO_MANY_REQUESTS, "too_many_sessions", message)
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        if status != "ready":
            self._count_refusal(connection, status, "max_sessions reached" if status == "full" else f"server {status}")
            if status == "full" and answers_full:
                return None  # upgraded, not admitted, as above
            response = respond_json(connection, unavailable, body)
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        self._admitted.add(connection)
        return None

    def _sessions_from(self, address: str) -> int:
        self._open_connections()  # forget closed connections
        return sum(1 for c in self._admitted if c.remote_address[0] == address)

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, reason: str, message: str) -> Response:
        """An upgrade refused before the handshake."""
        self._count_refusal(connection, reason, message)
        return respond_json(connection, status, dump({"status": reason, "message": message}))

    def _count_refusal(self, connection: ServerConnection, reason: str, message: str) -> None:
        """Logged, since no session will be, and counted."""
        log.info("connection refused", reason=reason, peer=str(connection.remote_address), message=message)
        self.metrics.refused.labels(reason).inc()

    def _unauthorized(self, connection: ServerConnection) -> Response:
        response = self._refuse(connection, HTTPStatus.UNAUTHORIZED, "unauthorized",
                                "a valid token is required: Authorization: Bearer TOKEN, or ?token=TOKEN")
        response.headers["WWW-Authenticate"] = 'Bearer realm="streamd"'
        return response

    def _metrics(self, connection: ServerConnection, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text format, behind the sessions' tokens."""
        if not self.access.authorized(request.path, request.headers):
            return self._unauthorized(connection)
        return respond(connection, HTTPStatus.OK, self.metrics.exposition(), CONTENT_TYPE)

    def _serve_metrics(self, host: str, port: int) -> Callable[[], None]:
        """``/metrics`` on a port of its own (prometheus_client's HTTP server, on a thread of its
        own, without tokens or TLS); returns what stops it."""
        http_server, thread = start_http_server(port, host, self.metrics.registry)
        log.info("listening", listener="metrics", host=host, port=http_server.server_port)

        def stop() -> None:
            http_server.shutdown()
            thread.join()

        return stop

    def _backlog_seconds(self) -> float:
        return sum(session.backlog_seconds() for session in self._sessions)


def build_engine(settings: ServeConfig) -> StreamingEngine:
    """The server's engine, built where it will run (module level: it is pickled for
    ``engine_process``)."""
    import torch

    from streamd.engine.loading import UNTRAINED_WARNING, is_untrained, prepare_model

    s = settings
    if s.threads:
        torch.set_num_threads(s.threads)
    started = time.monotonic()
    model = prepare_model(s.model, s.device, s.dtype, s.decoder_cuda_graphs, s.encoder_cuda_graphs)
    if is_untrained(model):
        log.warning(UNTRAINED_WARNING)
    log.info("model loaded", model=s.model, seconds=round(time.monotonic() - started, 1))
    engine = StreamingEngine(model, max_batch=s.max_batch, max_streams=s.max_sessions)
    log.info("engine built", seconds=round(time.monotonic() - started, 1))
    return engine


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """The server side of TLS for every listener (``wss://``, ``https://``), or None without a cert."""
    if not cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def _listen_backlog(max_sessions: int) -> int:
    """Pending connections the kernel queues: asyncio's default of 100 drops the SYNs of a
    burst of clients (each then retries after a second or more), so allow one per session
    (the kernel caps it at net.core.somaxconn)."""
    return max(100, max_sessions)


async def run_server(settings: ServeConfig) -> int:
    """Run until SIGTERM or SIGINT; return the process exit code. SIGUSR1 writes every thread's
    stack to stderr (the log) and carries on: for a server that looks stuck."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await Server(settings, stop).run()
