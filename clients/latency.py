"""``python -m clients.latency URL FILE --chunk-ms 80,160,560,1120 --out DIR``: latency per chunk size.

For each chunk size, replays the file in real time on ``--streams`` concurrent connections and
measures (definitions in docs/server.md): first-partial latency, per-update latency p50/p90/p99
(from sending the audio that completes a chunk to receiving the message it produced), and final
latency after ``eof``. Writes ``latency.json``, a markdown table ``latency.md`` and a plot
``latency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from clients.common import (
    ClientError,
    Pcm,
    ServerAccess,
    SessionResult,
    add_access_arguments,
    fail,
    percentiles,
    run_session,
)

ROWS = (  # (label, key in a chunk summary, percentile)
    ("first partial", "first_partial_s", "p50"),
    ("update p50", "update_s", "p50"),
    ("update p90", "update_s", "p90"),
    ("update p99", "update_s", "p99"),
    ("final p50", "final_s", "p50"),
)


def _chunk_sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of milliseconds: {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.latency", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws://HOST:PORT/ or wss://HOST:PORT/")
    parser.add_argument("file", help="audio file to replay in real time")
    parser.add_argument("--chunk-ms", type=_chunk_sizes, default=[80, 160, 560, 1120],
                        help="comma-separated model chunk sizes (default 80,160,560,1120)")
    parser.add_argument("--streams", type=int, default=1, help="concurrent connections per chunk size")
    parser.add_argument("--frame-ms", type=float, default=80.0, help="audio per WebSocket frame (default 80)")
    parser.add_argument("--out", type=Path, required=True, help="directory for latency.json/.md/.png")
    add_access_arguments(parser)
    return parser.parse_args(argv)


async def measure(url: str, pcm: Pcm, chunk_ms: int, streams: int, frame_ms: float,
                  access: ServerAccess | None = None) -> dict[str, Any]:
    """Replay ``pcm`` on ``streams`` connections at once; summarize their latencies."""
    config = pcm.config() | {"chunk_ms": chunk_ms}
    results: list[SessionResult] = await asyncio.gather(
        *(run_session(url, config, pcm.replay(frame_ms, realtime=True), access=access) for _ in range(streams)))
    latencies = [r.latency() for r in results]

    def measured(key: str) -> list[float]:
        return [x[key] for x in latencies if x[key] is not None]

    return {
        "chunk_ms": chunk_ms,
        "streams": streams,
        "texts": sorted({r.text for r in results}),
        "first_partial_s": percentiles(measured("first_partial_s")),
        "first_partial_audio_s": percentiles(measured("first_partial_audio_s")),
        "update_s": percentiles([u for x in latencies for u in x["update_samples_s"]]),
        "updates": sum(x["updates"] for x in latencies),
        "final_s": percentiles(measured("final_s")),
    }


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Latency: `{report['file']}` ({report['audio_seconds']:.2f} s, real time, "
        f"{report['streams']} stream(s) per chunk size)",
        "",
        "| chunk ms | first partial ms | its audio ms | update p50 ms | update p90 ms | update p99 ms | updates "
        "| final p50 ms | final p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["chunks"]:
        lines.append(
            f"| {c['chunk_ms']} | {_seconds(c['first_partial_s']['p50'])} "
            f"| {_seconds(c['first_partial_audio_s']['p50'])} | {_seconds(c['update_s']['p50'])} "
            f"| {_seconds(c['update_s']['p90'])} | {_seconds(c['update_s']['p99'])} | {c['updates']} "
            f"| {_seconds(c['final_s']['p50'])} | {_seconds(c['final_s']['p99'])} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chunks = report["chunks"]
    positions = range(len(chunks))
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, key, pct in ROWS:
        values = [float("nan") if c[key][pct] is None else c[key][pct] * 1000 for c in chunks]
        axes.plot(positions, values, marker="o", label=label)
    axes.set_xticks(list(positions), [str(c["chunk_ms"]) for c in chunks])
    axes.set_xlabel("chunk (ms)")
    axes.set_ylabel("latency (ms)")
    axes.set_title(f"streamd latency, real-time replay, {report['streams']} stream(s)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


async def run(args: argparse.Namespace, pcm: Pcm) -> dict[str, Any]:
    chunks = []
    for chunk_ms in args.chunk_ms:
        chunks.append(await measure(args.url, pcm, chunk_ms, args.streams, args.frame_ms, ServerAccess.from_args(args)))
        print(f"chunk {chunk_ms} ms: {json.dumps(chunks[-1])}", file=sys.stderr)
    return {"url": args.url, "file": args.file, "audio_seconds": round(pcm.seconds, 3),
            "streams": args.streams, "frame_ms": args.frame_ms, "chunks": chunks}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pcm = Pcm.read(args.file)
        report = asyncio.run(run(args, pcm))
    except ClientError as exc:
        return fail(exc, exc.exit_code)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "latency.md").write_text(markdown(report))
    plot(report, args.out / "latency.png")
    print(f"wrote {args.out}/latency.json, latency.md, latency.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
