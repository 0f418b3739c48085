"""Does a server turn ready and answer? A diagnosis for machines where it did not.

    python bench/serve_probe.py MODEL.nemo --device cuda --log server.log [key=value ...]

On the lent H200s (2026-11-26/27) ``streamd serve`` answered ``/readyz`` 503 while loading and,
once it logged ``ready``, accepted connections without answering them. This starts the server
with websockets' opening handshake instrumented (websockets aborts a connection whose handshake
raises without logging it, so the reason is logged here), probes ``/readyz`` and ``/healthz``
every half second with the time each answer took, dumps the server's thread stacks (SIGUSR1)
and stops it. Exit status 0 when ``/readyz`` answered 200, else 1.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import subprocess
import sys
import time
from pathlib import Path

from streamd.serverproc import free_port

# Run in the server process: log any exception of an opening handshake, then start the CLI.
INSTRUMENTED = """
import sys
from websockets.asyncio.server import ServerConnection
from streamd.log import get_logger

handshake = ServerConnection.handshake
log = get_logger("serve_probe")

async def logged(self, *args, **kwargs):
    try:
        await handshake(self, *args, **kwargs)
    except Exception:
        log.exception("opening handshake raised")
        raise

ServerConnection.handshake = logged
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--log", type=Path, required=True, help="the server's log")
    parser.add_argument("--seconds", type=float, default=100, help="probe this long at most (default 100)")
    parser.add_argument("overrides", nargs="*", help="more key=value settings for the server")
    args = parser.parse_intermixed_args()
    port = free_port()
    with args.log.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", INSTRUMENTED, "--log-format", "json", "serve",
             f"model={args.model}", f"device={args.device}", "host=127.0.0.1", f"port={port}", *args.overrides],
            stdout=log, stderr=subprocess.STDOUT)
    ready_at, answered = None, False
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and server.poll() is None:
        line = probe(port, "/readyz")
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
        answered = answered or " 200 " in line
        if ready_at is None and '"event": "ready"' in args.log.read_text():
            ready_at = time.monotonic()
            print(probe(port, "/healthz"), flush=True)
        if answered or (ready_at is not None and time.monotonic() - ready_at > 30):
            break
        time.sleep(0.5)
    if server.poll() is None:
        server.send_signal(signal.SIGUSR1)  # every thread's stack to the log
        time.sleep(1)
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print(f"server exit status {server.returncode}; /readyz 200 {'seen' if answered else 'never seen'}")
    return 0 if answered else 1


if __name__ == "__main__":
    sys.exit(main())
