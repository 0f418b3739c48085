"""The engine in a process of its own, with its own interpreter lock (``engine_process=true``).

On a thread, the engine's per-stream Python and the event loop (websockets' framing, ~60–75 µs
of the loop per client frame) take turns at one GIL; where the model's compute is small, as on a
GPU, that lock is what bounds the server (docs/benchmarks.md). Here a child process runs the
:class:`EngineWorker` and serves its calls over a pipe, one at a time; the server process keeps
the sockets and the sessions. The child is spawned, not forked: a CUDA context does not survive
a fork, and the server's threads and sockets have no business in the child.

Audio does not go through the pipe: a socket moved it at ~0.5 GB/s here (10 ms for the 4 MB
of 400 streams' 160 ms frames; 43 ms for 1500), in the step's critical path and holding this
process's GIL to pickle it. Pushed samples are written into a memory buffer both processes map
(:class:`AudioOut` / :class:`AudioIn`; a memfd, so no ``/dev/shm`` size limit applies) and the
commands carry offsets; the child copies them out during the call, before the next one can
overwrite them.

The child ignores SIGINT and SIGTERM (the server drains its sessions first, then stops it), exits
when the pipe closes (the server is gone), and writes its threads' stacks to the log on SIGUSR1
(its pid is logged as ``engine process started``). If it dies, every call raises
:class:`EngineProcessDied`, which the runner handles like a failed device.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import mmap
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import numpy as np
import structlog

from streamd.engine.worker import COMMAND_CALLS, Command, EngineFailure, EngineWorker, StreamCommand, WorkerCall
from streamd.log import configure_logging, get_logger, logging_settings

log = get_logger(__name__)

STOP_TIMEOUT_S = 10.0  # for the child to finish its call in flight and exit before it is killed
MIN_AUDIO_BUFFER_BYTES = 8 << 20  # grows to twice what one call needed, when a call needs more


class EngineProcessDied(EngineFailure):
    """The engine's process exited (killed, out of memory, a crash in native code)."""


class AudioOut:
    """The server's side of the shared audio buffer: copies a call's pushed samples into it."""

    def __init__(self) -> None:
        self._buffer: mmap.mmap | None = None
        self._bytes = 0

    def pack(self, commands: list[Command]) -> tuple[list[Command], int | None]:
        """``commands`` with each push's samples replaced by where they lie in the buffer (float32
        ``offset`` and ``count``: plain ints, which pickle several times faster than any object),
        and the fd of a new, larger buffer when this call did not fit the old one (the caller
        sends it, then closes it)."""
        needed = sum(args[0].nbytes for command, _, args in commands if command is StreamCommand.PUSH_AUDIO)
        new_fd = self._grow(needed) if needed > self._bytes else None
        if not needed:
            return commands, new_fd
        assert self._buffer is not None
        floats = np.frombuffer(self._buffer, np.float32)
        packed: list[Command] = []
        offset = 0
        for command, stream_id, args in commands:
            if command is StreamCommand.PUSH_AUDIO:
                samples = args[0]
                floats[offset : offset + len(samples)] = samples
                args = (offset, len(samples))
                offset += len(samples)
            packed.append((command, stream_id, args))
        return packed, new_fd

    def _grow(self, needed: int) -> int:
        size = max(MIN_AUDIO_BUFFER_BYTES, 2 * needed, 2 * self._bytes)
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        fd = os.memfd_create("streamd-audio")
        os.ftruncate(fd, size)
        self._buffer, self._bytes = mmap.mmap(fd, size), size  # the old one unmaps once unreferenced
        return fd


class AudioIn:
    """The engine process's side of the shared audio buffer."""

    def __init__(self) -> None:
        self._buffer: mmap.mmap | None = None

    def attach(self, fd: int) -> None:
        """Map the new buffer (the old one unmaps once no samples view refers to it)."""
        self._buffer = mmap.mmap(fd, 0)
        os.close(fd)

    def unpack(self, commands: list[Command]) -> list[Command]:
        """``commands`` with each push's samples as a view of the buffer (the engine copies what
        it keeps, before the next call can overwrite them)."""
        pushes = StreamCommand.PUSH_AUDIO
        assert self._buffer is not None or not any(command is pushes for command, _, _ in commands)
        return [(command, stream_id, (np.frombuffer(self._buffer, np.float32, args[1], 4 * args[0]),))
                if command is pushes else (command, stream_id, args)
                for command, stream_id, args in commands]


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
        self._audio = AudioOut()
        self._unwatch: Callable[[], object] = lambda: None
        log.info("engine process started", pid=self._process.pid)

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop once the child has exited (watched from now on, so
        that a server with no session to notice it still learns that its engine is gone)."""
        loop = asyncio.get_running_loop()
        sentinel = self._process.sentinel

        def exited() -> None:
            loop.remove_reader(sentinel)  # readable from now on
            callback()

        loop.add_reader(sentinel, exited)
        self._unwatch = lambda: loop.remove_reader(sentinel)

    async def call(self, method: WorkerCall, *args: Any) -> Any:
        """``EngineWorker.method(*args)`` in the child; raises what it raised there."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._round_trip, method, args)

    def _round_trip(self, method: WorkerCall, args: tuple[Any, ...]) -> Any:
        new_buffer = None
        if method in COMMAND_CALLS:
            *rest, commands = args
            commands, new_buffer = self._audio.pack(commands)
            args = (*rest, commands)
        try:
            self._conn.send((method, args, new_buffer is not None))
            if new_buffer is not None:
                send_handle(self._conn, new_buffer, self._process.pid)
            status, value = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            raise EngineProcessDied(self._exit_reason()) from None
        finally:
            if new_buffer is not None:
                os.close(new_buffer)
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
        self._unwatch()
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
    """The child's main: answer ``(method, args, new_audio_buffer)`` requests (the buffer's fd follows
    when that is true) until ``None`` or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(log_level, log_format)
    structlog.contextvars.bind_contextvars(process="engine")
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    worker = EngineWorker()
    audio = AudioIn()
    while True:
        try:
            request = conn.recv()
            if request is None:
                return
            method, args, new_buffer = request
            if new_buffer:
                audio.attach(recv_handle(conn))
        except (EOFError, OSError):  # the server is gone
            return
        if method in COMMAND_CALLS:
            *rest, commands = args
            args = (*rest, audio.unpack(commands))
        try:
            reply: tuple[str, Any] = ("ok", getattr(worker, method.value)(*args))
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
