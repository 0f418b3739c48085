"""``streamd serve`` as a child process on a free loopback port: for benchmarks and tests.

Both need the real thing (a separate process, real sockets), started and stopped the way an
operator would: ``key=value`` overrides, ready when ``/readyz`` answers 200, SIGTERM to stop.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def stat_fields(stat: Path) -> list[str]:
    """A Linux ``/proc/.../stat`` file's fields after the command name (which is in parentheses
    and may hold spaces): state, parent pid, ..., utime and stime at indexes 11 and 12."""
    return stat.read_text().rpartition(")")[2].split()


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message holds its log's tail."""


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log_path: Path
    tls: ssl.SSLContext | None = None  # a server with tls_cert: how its clients trust it

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/"

    def get(self, path: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        """``GET path``: status, headers and the JSON body."""
        connection = (http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=self.tls) if self.tls
                      else http.client.HTTPConnection("127.0.0.1", self.port, timeout=10))
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), json.loads(response.read())
        finally:
            connection.close()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text()[-chars:]

    def pids(self) -> list[int]:
        """The server process and its descendants (``engine_process=true`` runs the engine in a
        child), from every process's parent in Linux ``/proc`` (``task/*/children`` is not on
        every kernel or sandbox)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):  # the process ended
                parent = int(stat_fields(stat)[1])
                children.setdefault(parent, []).append(int(stat.parent.name))
        found, index = [self.process.pid], 0
        while index < len(found):
            found += children.get(found[index], [])
            index += 1
        return found

    def engine_pid(self) -> int | None:
        """The pid the server logged in ``engine process started`` (``engine_process=true``)."""
        for line in self.log_path.read_text().splitlines():
            if '"engine process started"' in line:
                return int(json.loads(line)["pid"])
        return None

    def rss_bytes(self) -> int:
        """Resident memory summed over the server's processes (Linux ``/proc``)."""
        total = 0
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except FileNotFoundError:  # the process ended
                continue
            total += sum(int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:"))
        return total

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) of the server's main thread, which runs the event loop, and of
        all its other threads and processes together (Linux ``/proc``)."""
        tick = os.sysconf("SC_CLK_TCK")
        main = others = 0.0
        for task in (task for pid in self.pids() for task in _tasks(pid)):
            try:
                fields = stat_fields(task / "stat")
            except FileNotFoundError:  # the thread ended
                continue
            seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            if task.name == str(self.process.pid):
                main += seconds
            else:
                others += seconds
        return main, others

    def gpu_bytes(self) -> int | None:
        """GPU memory the server's processes hold, from ``nvidia-smi``; None without an NVIDIA GPU."""
        try:
            listing = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        pids = {str(pid) for pid in self.pids()}
        rows = (line.partition(",") for line in listing.splitlines())
        held = [int(mib) for pid, _, mib in rows if pid.strip() in pids]
        return sum(held) * 1024 * 1024 if held else None

    def wait_idle(self, timeout: float = 30) -> None:
        """Until no session is open (closed connections free their slot once the TCP close ends)."""
        deadline = time.monotonic() + timeout
        while (body := self.get("/readyz")[2])["sessions"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sessions still open: {body}")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM (finals are flushed), then the exit status; killed after 60 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _tasks(pid: int) -> list[Path]:
    """The threads of process ``pid`` (none once it ended)."""
    try:
        return list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(model: str | Path | None, port: int, overrides: Sequence[str],
                   python_args: Sequence[str] = ("-m", "streamd")) -> list[str]:
    """The command line of ``streamd serve`` on loopback ``port``, JSON logs, with ``key=value``
    overrides; ``python_args`` as in :func:`start_server`; ``model`` None: the shipped model."""
    named = [] if model is None else [f"model={model}"]
    return [sys.executable, *python_args, "--log-format", "json", "serve", *named, "host=127.0.0.1",
            f"port={port}", *overrides]


def start_server(model: str | Path | None, log_path: Path, ready_timeout_s: float = 300,
                 python_args: Sequence[str] = ("-m", "streamd"), env: Mapping[str, str] | None = None,
                 cafile: str | Path | None = None, **settings: Any) -> ServerProcess:
    """``python -m streamd serve`` on a free port; returns once ``/readyz`` answers 200.

    ``python_args`` replace ``-m streamd``: ``("-c", CODE)`` runs CODE, which must end by calling
    ``streamd.cli.main(sys.argv[1:])``, in the server process first (tests inject faults so).
    ``env``: the server's environment (default this process's). ``cafile``: the CA certificate
    that signed ``tls_cert``, for a server that speaks TLS (``wss://``, ``https://``).
    """
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            server_command(model, port, [f"{key}={value}" for key, value in settings.items()], python_args),
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )
    tls = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    server = ServerProcess(process, port, log_path, tls)
    deadline = time.monotonic() + ready_timeout_s
    answer = "none"  # the last probe's answer, for the error
    try:
        while True:
            if process.poll() is not None:
                raise ServerStartError(f"server exited with {process.returncode}:\n{server.log_tail()}")
            try:
                status, _, body = server.get("/readyz")
                if status == 200:
                    return server
                answer = f"{status} {body}"
            except (OSError, http.client.HTTPException, ValueError) as exc:  # not listening yet, or no JSON
                answer = repr(exc)
            if time.monotonic() > deadline:
                process.send_signal(signal.SIGUSR1)  # its threads' stacks go to the log
                if (engine_pid := server.engine_pid()) is not None:  # and the engine process's
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(engine_pid, signal.SIGUSR1)
                time.sleep(1)
                raise ServerStartError(f"server not ready after {ready_timeout_s} s (last /readyz answer: "
                                       f"{answer}); its threads' stacks end the log:\n{server.log_tail(12000)}")
            time.sleep(0.3)
    except BaseException:
        server.stop()  # also when interrupted: no server outlives its caller
        raise
