"""The ``streamd serve`` process: WebSocket sessions and HTTP probes on one port.

The socket opens first, so ``/healthz`` answers while the model loads on the engine's worker;
``/readyz`` turns 200 once the engine is warm. Every WebSocket upgrade is admitted or refused
in ``process_request`` — before the handshake — so a full or not-yet-ready server answers
HTTP 503 with ``Retry-After`` instead of accepting and then closing. SIGTERM/SIGINT drain:
stop accepting, end every session's stream with a ``shutdown`` final, and exit 0. A device that
stops running work (a poisoned CUDA context) fails every stream, turns ``/readyz`` to
``failed`` and exits 1, for a supervisor to restart the server.
"""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import time
from functools import partial
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.protocol import State

from streamd import protocol
from streamd.config import ServeConfig
from streamd.engine.engine import StreamingEngine
from streamd.engine.runner import EngineRunner
from streamd.log import get_logger
from streamd.oslimits import raise_open_files_limit
from streamd.protocol import ModelInfo
from streamd.session import Session

log = get_logger(__name__)

# WebSocket frames up to this multiple of max_message_bytes reach the session, which answers
# with a message_too_big error; larger ones are cut off by websockets itself (close 1009).
FRAME_LIMIT_FACTOR = 4


class Server:
    """Admission, probes, sessions and shutdown around one :class:`EngineRunner`."""

    def __init__(self, settings: ServeConfig, stop: asyncio.Event) -> None:
        self.settings = settings
        self.runner = EngineRunner()
        self.state = "loading"  # -> ready -> draining, or -> failed
        self.model: ModelInfo | None = None
        self._stop = stop  # set by SIGTERM/SIGINT, or by a failed device
        self._admitted: set[ServerConnection] = set()
        self._sessions: dict[Session, asyncio.Task[None]] = {}

    async def run(self) -> int:
        """Serve until the stop event is set (SIGTERM/SIGINT, or a failed device); return the exit code."""
        s = self.settings
        open_files, wanted = raise_open_files_limit(s.max_sessions)
        if open_files < wanted:
            log.warning("open-files limit below max_sessions; connections beyond it will fail",
                        limit=open_files, wanted=wanted)
        try:
            # No permessage-deflate: PCM audio barely compresses, and deflating every frame cost the
            # event loop (and so the engine thread, through the GIL) more than any other protocol work.
            async with serve(self._handle, s.host, s.port, process_request=self._process_request,
                             max_size=FRAME_LIMIT_FACTOR * s.max_message_bytes,
                             compression=None, backlog=_listen_backlog(s.max_sessions)) as ws_server:
                port = next(iter(ws_server.sockets)).getsockname()[1]
                log.info("listening", host=s.host, port=port)
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
                await self._drain(ws_server)
        finally:
            await self.runner.stop()
        log.info("stopped")
        return 1 if self.state == "failed" else 0

    async def _load(self) -> ModelInfo:
        """Load, build and warm up the engine on its worker; describe the model for ``ready``."""
        s = self.settings
        engine = await self.runner.start(partial(build_engine, s), s.warmup_batch, self._device_failed,
                                         s.load_log_interval_s, s.batch_window_ms / 1000, s.engine_process)
        return ModelInfo.describe(Path(s.model).stem, engine.sample_rate, engine.att_context_sizes,
                                  engine.frame_s, s.default_chunk_ms)

    def _device_failed(self, reason: str) -> None:
        """Every stream has failed and no later one could run: refuse sessions and exit with 1,
        so that a supervisor starts a fresh process (a poisoned CUDA context does not recover)."""
        log.error("device failed; stopping", reason=reason)
        self.state = "failed"
        self._stop.set()

    async def _drain(self, ws_server: WebSocketServer) -> None:
        """Stop accepting, let every session end its stream, cancel what outlives the timeout."""
        log.info("shutting down", sessions=len(self._sessions))
        ws_server.close(close_connections=False)
        for session in self._sessions:
            session.shutdown()
        try:
            await asyncio.wait_for(ws_server.wait_closed(), self.settings.shutdown_timeout_s)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            log.warning("sessions outlived shutdown_timeout_s; cancelling", sessions=len(self._sessions))
            for task in self._sessions.values():
                task.cancel()
            await ws_server.wait_closed()

    # ------------------------------------------------------------------ connections
    async def _handle(self, connection: ServerConnection) -> None:
        assert self.model is not None  # admission requires a loaded model
        session = Session(connection, self.runner, self.model, self.settings)
        task = asyncio.current_task()
        assert task is not None
        self._sessions[session] = task
        if self.state == "draining":  # upgraded just as the drain began
            session.shutdown()
        try:
            await session.run()
        finally:
            del self._sessions[session]

    def _open_connections(self) -> int:
        """Admitted connections not yet closed (sessions, and upgrades still in handshake)."""
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        return len(self._admitted)

    def _readiness(self) -> str:
        if self.state == "ready" and self._open_connections() >= self.settings.max_sessions:
            return "full"
        return self.state

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _json(connection, HTTPStatus.OK, protocol.health())
        status = self._readiness()
        body = protocol.readiness(status, self._open_connections(), self.settings.max_sessions)
        unavailable = HTTPStatus.SERVICE_UNAVAILABLE
        if path == "/readyz":
            return _json(connection, HTTPStatus.OK if status == "ready" else unavailable, body)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None  # not an upgrade: websockets answers 426
        if status != "ready":
            response = _json(connection, unavailable, body)
            response.headers["Retry-After"] = "1"
            return response
        self._admitted.add(connection)
        return None


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
    log.info("model loaded", seconds=round(time.monotonic() - started, 1))
    engine = StreamingEngine(model, max_batch=s.max_batch, max_streams=s.max_sessions)
    log.info("engine built", seconds=round(time.monotonic() - started, 1))
    return engine


def _listen_backlog(max_sessions: int) -> int:
    """Pending connections the kernel queues: asyncio's default of 100 drops the SYNs of a
    burst of clients (each then retries after a second or more), so allow one per session
    (the kernel caps it at net.core.somaxconn)."""
    return max(100, max_sessions)


def _json(connection: ServerConnection, status: HTTPStatus, body: str) -> Response:
    response = connection.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


async def run_server(settings: ServeConfig) -> int:
    """Run until SIGTERM or SIGINT; return the process exit code. SIGUSR1 writes every thread's
    stack to stderr (the log) and carries on: for a server that looks stuck."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await Server(settings, stop).run()
