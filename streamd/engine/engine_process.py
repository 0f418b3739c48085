"""The engine in a process of its own, with its own interpreter lock (``engine_process=true``).

On a thread, the engine's per-stream Python and the event loop (websockets' framing, ~60–75 µs
of the loop per client frame) take turns at one GIL; where the model's compute is small, as on a
GPU, that lock is what bounds the server (docs/benchmarks.md). Here a child process runs the
:class:`EngineWorker` and serves its calls over a pipe, one at a time; the server process keeps
the sockets and the sessions. The child is spawned, not forked: a CUDA context does not survive
a fork, and the server's threads and sockets have no business in the child.

The child ignores SIGINT and SIGTERM (the server drains its sessions first, then stops it), exits
when the pipe closes (the server is gone), and writes its threads' stacks to the log on SIGUSR1
(its pid is logged as ``engine process started``). If it dies, every call raises
:class:`EngineProcessDied`, which the runner handles like a failed device.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import multiprocessing
import pickle
import signal
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import structlog

from streamd.engine.worker import EngineFailure, EngineWorker
from streamd.log import configure_logging, get_logger, logging_settings

log = get_logger(__name__)

STOP_TIMEOUT_S = 10.0  # for the child to finish its call in flight and exit before it is killed


class EngineProcessDied(EngineFailure):
    """The engine's process exited (killed, out of memory, a crash in native code)."""


class ProcessWorker:
    """The server's end of the pipe to a child process that runs an :class:`EngineWorker`."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(target=serve_worker, args=(child_end, *logging_settings()),
                                        name="streamd-engine", daemon=True)
        self._process.start()
        child_end.close()
        # Calls go out one at a time, in order, from this thread (which waits on the pipe without the GIL).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="streamd-engine-pipe")
        log.info("engine process started", pid=self._process.pid)

    async def call(self, method: str, *args: Any) -> Any:
        """``EngineWorker.method(*args)`` in the child; raises what it raised there."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._round_trip, method, args)

    def _round_trip(self, method: str, args: tuple[Any, ...]) -> Any:
        try:
            self._conn.send((method, args))
            status, value = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            raise EngineProcessDied(self._exit_reason()) from None
        if status == "error":
            raise value
        return value

    def _exit_reason(self) -> str:
        self._process.join(STOP_TIMEOUT_S)
        code = self._process.exitcode
        if code is None:
            return "the engine process stopped answering"
        if code < 0:
            return f"the engine process was killed by {signal.Signals(-code).name}"
        return f"the engine process exited with code {code}"

    async def stop(self) -> None:
        """Let the call in flight finish, end the child (killing it after ``STOP_TIMEOUT_S``)."""
        await asyncio.get_running_loop().run_in_executor(None, self._shut_down)

    def _shut_down(self) -> None:
        stop_sent = self._executor.submit(self._conn.send, None)  # after the call in flight, if any
        with contextlib.suppress(Exception):  # the child is gone already, or still busy: it is killed below
            stop_sent.result(STOP_TIMEOUT_S)
        self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            log.warning("engine process did not stop; killing it", pid=self._process.pid)
            self._process.kill()
            self._process.join()
        self._executor.shutdown()  # a call waiting on the pipe ends with the child (EOF)
        self._conn.close()


def serve_worker(conn: Connection, log_level: str, log_format: str) -> None:
    """The child's main: answer ``(method, args)`` requests until ``None`` or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(log_level, log_format)
    structlog.contextvars.bind_contextvars(process="engine")
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    worker = EngineWorker()
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the server is gone
            return
        if request is None:
            return
        method, args = request
        try:
            reply: tuple[str, Any] = ("ok", getattr(worker, method)(*args))
        except Exception as exc:
            reply = ("error", exc)
        try:
            conn.send_bytes(_pickled(reply))
        except OSError:  # the server is gone
            return


def _pickled(reply: tuple[str, Any]) -> bytes:
    """``reply`` pickled, or an :class:`EngineFailure` naming what could not cross the pipe (an
    exception from a library whose class does not pickle)."""
    try:
        return pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        what = f"{type(reply[1]).__name__}: {reply[1]}" if reply[0] == "error" else f"result not picklable: {exc}"
        return pickle.dumps(("error", EngineFailure(what)), pickle.HIGHEST_PROTOCOL)
