"""Does a server turn ready and answer? A diagnosis for machines where it did not.

    python bench/serve_probe.py MODEL.nemo --device cuda --log server.log [key=value ...]

On the lent H200s (2026-11-26/27) ``streamd serve`` answered ``/readyz`` 503 while loading and,
once it logged ``ready``, accepted connections without answering them. This starts the server
with websockets' opening handshake instrumented (websockets aborts a connection whose handshake
raises or times out without logging it, so here every handshake is logged), probes ``/readyz``
and ``/healthz`` every half second with the time each answer took, then reports the kernel's
view of the port (accept queue, connection states, which processes hold the sockets), the
server's event loop (tasks, watched descriptors: SIGUSR2), its thread stacks (SIGUSR1), and
stops it. Exit status 0 when ``/readyz`` answered 200, else 1. Bisection aids:
``--cuda-context`` creates a CUDA context in the server first (with ``--device cpu``: is CUDA in
the process enough to silence it?); ``--bare`` probes a bare websockets server instead (does any
asyncio WebSocket server answer on this machine?).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from streamd.serverproc import free_port, server_command

# Run in the server process before the CLI (with SERVE_PROBE_BARE, a bare websockets server in its
# place): every opening handshake logged with its time (and what it raised), and the event loop's
# state logged on SIGUSR2.
INSTRUMENTED = """
import asyncio, os, signal, sys, threading, time, traceback
from websockets.asyncio.server import ServerConnection
from streamd.log import get_logger

handshake, data_received = ServerConnection.handshake, ServerConnection.data_received
log = get_logger("serve_probe")

def received(self, data):
    # What a connection read before its request was parsed (websockets drops a request it cannot
    # parse silently: it half-closes without a response and keeps the reason in handshake_exc).
    if self.request is None:
        log.info("request bytes", data=repr(bytes(data[:200])), length=len(data))
    data_received(self, data)

async def logged(self, *args, **kwargs):
    # BaseException too: websockets' open_timeout cancels a handshake that hangs.
    started = time.monotonic()
    try:
        await handshake(self, *args, **kwargs)
    except BaseException:
        log.exception("opening handshake raised", seconds=round(time.monotonic() - started, 2),
                      request_received=self.request is not None)
        raise
    failure = self.protocol.handshake_exc
    cause = failure.__cause__ if failure is not None else None
    log.info("opening handshake done", seconds=round(time.monotonic() - started, 3),
             path=self.request.path if self.request else None,
             status=self.response.status_code if self.response else None,
             handshake_exc=repr(failure) if failure is not None else None,
             cause="".join(traceback.format_exception(cause)) if cause is not None else None)

def report(signum, frame):
    # Runs on the main thread, which runs the event loop: its tasks, the file descriptors its
    # selector watches, every open one, the threads and the top-level modules loaded.
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    watched = sorted(key.fd for key in selector.get_map().values()) if selector else "not a selector loop"
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    log.warning("probe report", loop=type(loop).__module__ + "." + type(loop).__name__,
                tasks=sorted(f"{t.get_name()}: {t.get_coro()!r}" for t in asyncio.all_tasks(loop)),
                selector_fds=watched, open_fds=fds, threads=[t.name for t in threading.enumerate()],
                modules=sorted({name.partition(".")[0] for name in sys.modules}))

signal.signal(signal.SIGUSR2, report)
ServerConnection.handshake = logged
ServerConnection.data_received = received
if os.environ.get("SERVE_PROBE_CUDA_CONTEXT"):
    import torch
    torch.zeros(1, device="cuda")  # a CUDA context in the process, whatever device serves
    log.info("CUDA context created", device=torch.cuda.get_device_name())
if os.environ.get("SERVE_PROBE_BARE"):  # websockets alone: no streamd server, no torch, always 200
    import faulthandler
    from http import HTTPStatus
    from websockets.asyncio.server import serve
    from streamd.log import configure_logging

    async def bare(port):
        async with serve(lambda connection: connection.close(), "127.0.0.1", port, compression=None,
                         process_request=lambda connection, request: connection.respond(HTTPStatus.OK, "ok\\n")):
            log.info("ready", port=port)
            await asyncio.Event().wait()  # until SIGTERM

    configure_logging(fmt="json")
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.run(bare(int(os.environ["SERVE_PROBE_BARE"])))
from streamd.cli import main
sys.exit(main(sys.argv[1:]))
"""

def probe(port: int, path: str) -> str:
    started = time.monotonic()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        connection.request("GET", path)
        response = connection.getresponse()
        answer = f"{response.status} {response.read()[:80]!r}"
        connection.close()
    except (OSError, http.client.HTTPException) as exc:
        answer = repr(exc)
    return f"{path} {answer} in {time.monotonic() - started:.2f} s"


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
              "0B": "CLOSING"}


def _address(field: str) -> tuple[str, int]:
    """``/proc/net/tcp``'s ``0100007F:1F90`` as ``("127.0.0.1", 8080)`` (IPv6 left in hex)."""
    host, port = field.split(":")
    if len(host) == 8:
        host = ".".join(str(b) for b in reversed(bytes.fromhex(host)))
    return host, int(port, 16)


def socket_report(port: int, server_pid: int) -> list[str]:
    """The kernel's view of the port (``/proc/net/tcp``): each socket's state, queues (for LISTEN,
    rx is the accept queue: connections the server has not accepted) and the processes holding it;
    and the server's child processes (a forked child inherits the listening socket)."""
    holders: dict[str, list[str]] = {}
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    holders.setdefault(target[8:-1], []).append(fd_dir.parent.name)
        except OSError:  # the process ended, or is not ours to read
            continue
    lines, time_wait = [], 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            (local, local_port), (remote, remote_port) = (_address(field) for field in fields[1:3])
            state, inode = TCP_STATES.get(fields[3], fields[3]), fields[9]
            if port not in (local_port, remote_port):
                continue
            if state == "TIME_WAIT":  # closed connections, no process left
                time_wait += 1
                continue
            tx, rx = (int(q, 16) for q in fields[4].split(":"))
            lines.append(f"{local}:{local_port} -> {remote}:{remote_port} {state} rx={rx} tx={tx} "
                         f"held by pids {sorted(set(holders.get(inode, [])))}")
    lines.append(f"{time_wait} in TIME_WAIT")
    children = [pid for task in Path(f"/proc/{server_pid}/task").glob("*")
                for pid in (task / "children").read_text().split()]
    return [*lines, f"server pid {server_pid}, children {children}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--log", type=Path, required=True, help="the server's log")
    parser.add_argument("--seconds", type=float, default=100, help="probe this long at most (default 100)")
    parser.add_argument("--grace", type=float, default=30,
                        help="after the server logs ready, give /readyz this long to answer 200 (default 30)")
    parser.add_argument("--cuda-context", action="store_true",
                        help="create a CUDA context in the server before it starts (with --device cpu: "
                             "does CUDA in the process alone stop the server answering?)")
    parser.add_argument("--bare", action="store_true",
                        help="probe a bare websockets server (no streamd server, no torch) instead: does "
                             "any asyncio WebSocket server answer on this machine?")
    parser.add_argument("overrides", nargs="*", help="more key=value settings for the server")
    args = parser.parse_intermixed_args()
    port = free_port()
    env = dict(os.environ)
    if args.cuda_context:
        env["SERVE_PROBE_CUDA_CONTEXT"] = "1"
    if args.bare:
        env["SERVE_PROBE_BARE"] = str(port)
    with args.log.open("w") as log:
        server = subprocess.Popen(
            server_command(args.model, port, [f"device={args.device}", *args.overrides], ("-c", INSTRUMENTED)),
            stdout=log, stderr=subprocess.STDOUT, env=env)
    ready_at, answered = None, False
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and server.poll() is None:
        line = probe(port, "/readyz")
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
        answered = answered or " 200 " in line
        if ready_at is None and '"event": "ready"' in args.log.read_text():
            ready_at = time.monotonic()
            print(probe(port, "/healthz"), flush=True)
        if answered or (ready_at is not None and time.monotonic() - ready_at > args.grace):
            break
        time.sleep(0.5)
    if server.poll() is None:
        # One request left unread by us: the report shows how far the server got with it.
        with contextlib.ExitStack() as stack:
            try:
                pending = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
                pending.sendall(b"GET /readyz HTTP/1.1\r\nHost: probe\r\n\r\n")
            except OSError as exc:
                print(f"pending request: {exc!r}", flush=True)
            time.sleep(1)
            print("\n".join(socket_report(port, server.pid)), flush=True)
            server.send_signal(signal.SIGUSR2)  # the loop's tasks, watched descriptors, threads, modules
            server.send_signal(signal.SIGUSR1)  # every thread's stack to the log
            time.sleep(1)
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print(f"server exit status {server.returncode}; /readyz 200 {'seen' if answered else 'never seen'}")
    return 0 if answered else 1


if __name__ == "__main__":
    sys.exit(main())
