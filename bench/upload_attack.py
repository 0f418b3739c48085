"""The upload attack as a benchmark: ``--sessions`` sessions each sending an hour of audio as
fast as TCP allows, and the server's RSS against the bound its settings give.

The same scenario as tests/test_abuse.py (:func:`streamd.bench.server.upload_attack`), with its
knobs: the frame size (``--frame-bytes``, also the server's ``max_message_bytes``), ``max_backlog_s``,
how long the attack runs, and the WebSocket layer's receive queue (``--receive-queue``: frames
websockets holds for a session that is not reading; ``server`` is streamd's own setting, a number
patches it in the server process, e.g. 16, websockets' default, for comparison). Each value gets a
fresh server; values alternate over ``--rounds``.

Usage: python bench/upload_attack.py --model tones.nemo [--sessions 64] [--frame-bytes 1048576]
       [--backlog-s 30] [--wall-s 20] [--receive-queue server,16] [--rounds 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from streamd.bench.machine import machine_description
from streamd.bench.server import MIB, per_session_bound, serving, upload_attack
from streamd.server.app import RECEIVE_QUEUE_FRAMES


def patched_server(receive_queue: str) -> tuple[str, ...]:
    """``start_server``'s ``python_args`` for a server whose receive queue is ``receive_queue``."""
    if receive_queue == "server":
        return ("-m", "streamd")
    return ("-c", "import sys\nimport streamd.server.app as app\n"
                  f"app.RECEIVE_QUEUE_FRAMES = {int(receive_queue)}\n"
                  "from streamd.cli import main\nsys.exit(main(sys.argv[1:]))")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=".nemo model to serve")
    parser.add_argument("--sessions", type=int, default=64, help="uploading sessions (default 64)")
    parser.add_argument("--frame-bytes", type=int, default=1_048_576,
                        help="bytes per frame, and the server's max_message_bytes (default 1048576)")
    parser.add_argument("--backlog-s", type=float, default=30.0, help="the server's max_backlog_s (default 30)")
    parser.add_argument("--wall-s", type=float, default=20.0, help="how long the attack runs (default 20)")
    parser.add_argument("--receive-queue", default="server",
                        help="comma list: 'server' (streamd's) or frames, each on a fresh server (default server)")
    parser.add_argument("--rounds", type=int, default=1, help="times each value runs, alternating (default 1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    bound = args.sessions * per_session_bound(args.backlog_s, args.frame_bytes)
    runs = []
    for _ in range(args.rounds):
        for receive_queue in args.receive_queue.split(","):
            with serving(args.model, None, python_args=patched_server(receive_queue), threads=1,
                         max_sessions=args.sessions, max_backlog_s=args.backlog_s,
                         max_message_bytes=args.frame_bytes) as server:
                run = upload_attack(server, args.sessions, args.frame_bytes, 3600, args.wall_s)
                server.wait_idle(120)
            frames = RECEIVE_QUEUE_FRAMES if receive_queue == "server" else int(receive_queue)
            run |= {"receive_queue_frames": frames, "backlog_s": args.backlog_s,
                    "peak_over_idle_mib": round(run["peak_rss_mib"] - run["idle_rss_mib"], 1),
                    "per_session_mib": round((run["peak_rss_mib"] - run["idle_rss_mib"]) / args.sessions, 2)}
            runs.append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "rss_samples_mib"}), flush=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_description(torch.device("cpu"), 1), "model": args.model,
              "command": "python " + shlex.join(["bench/upload_attack.py", *sys.argv[1:]]),
              "bound_over_idle_mib": round(bound / MIB, 1),
              "per_session_bound_mib": round(bound / args.sessions / MIB, 2), "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
