"""Benchmark one client uploading a long recording at once against live streams on the same server.

A client may send a file's audio as fast as the socket takes it (replay, batch jobs). The live
streams batched with it must not notice: this runs ``--live`` real-time streams through a real
server and client, once alone and once with one more session that uploads ``--upload-seconds``
of audio in 1 s frames, starting a third of the way in; rounds alternate. It reports the live
streams' update latency (audio that completes a chunk sent -> its message received) each way, and
how long the upload's session took.

Usage: python bench/bulk_upload.py --model tones.nemo [--live 8] [--live-seconds 12] [--chunk-ms 160]
       [--upload-seconds 300] [--rounds 2] [--out bulk_upload.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from clients.common import percentiles
from streamd.bench.machine import machine_description
from streamd.bench.server import run_sessions, serving, update_latencies
from streamd.models import tones

LIVE_FRAME_MS = 80
UPLOAD_FRAME_MS = 1000


async def one_round(url: str, live: list[np.ndarray], upload: np.ndarray | None, chunk_ms: int
                    ) -> tuple[list[float], float | None]:
    """The live streams' update latencies, and the upload's session seconds (None without one)."""
    async def uploading() -> float:
        await asyncio.sleep(len(live[0]) / tones.SAMPLE_RATE / 3)
        started = time.perf_counter()
        await run_sessions(url, [upload], chunk_ms, False, UPLOAD_FRAME_MS)
        return time.perf_counter() - started

    live_run = run_sessions(url, live, chunk_ms, True, LIVE_FRAME_MS)
    if upload is None:
        return update_latencies(await live_run), None
    results, upload_s = await asyncio.gather(live_run, uploading())
    return update_latencies(results), upload_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=".nemo model to serve")
    parser.add_argument("--live", type=int, default=8, help="real-time streams (default 8)")
    parser.add_argument("--live-seconds", type=float, default=12.0, help="each live stream's audio (default 12)")
    parser.add_argument("--chunk-ms", type=int, default=160, help="every stream's chunk (default 160)")
    parser.add_argument("--upload-seconds", type=float, default=300.0, help="audio uploaded at once (default 300)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds without and with it (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    live = [tones.random_audio(rng, args.live_seconds) for _ in range(args.live)]
    upload = tones.random_audio(rng, args.upload_seconds)
    rows = []
    with serving(args.model, None, threads=args.threads, max_batch=args.live + 1,
                 max_sessions=args.live + 2) as server:
        warm_up = live[0][: 2 * tones.SAMPLE_RATE]
        asyncio.run(run_sessions(server.url, [warm_up], args.chunk_ms, False, args.chunk_ms))
        for _ in range(args.rounds):
            for audio in (None, upload):
                latencies, upload_s = asyncio.run(one_round(server.url, live, audio, args.chunk_ms))
                rows.append({"upload": audio is not None, "live_update_s": percentiles(latencies),
                             "live_update_max_s": round(max(latencies), 4),
                             "upload_session_s": None if upload_s is None else round(upload_s, 2)})
                print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine_description(torch.device("cpu"), args.threads),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
              "live": args.live, "chunk_ms": args.chunk_ms, "upload_seconds": args.upload_seconds,
              "threads": args.threads, "rounds": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
