"""``streamd bench engine``: engine throughput, step latency and batching gain (JSON + markdown)."""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from streamd.commands.transcribe import CHUNK_MS


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (results as JSON and a markdown table)")
    kinds = parser.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    engine = kinds.add_parser("engine", help="engine throughput and batching gain (no network)")
    engine.add_argument("--model", required=True, help=".nemo file (untrained models are fine: speed only)")
    engine.add_argument("--streams", type=_ints, default=[1, 2, 4, 8, 16], help="comma list (default 1,2,4,8,16)")
    engine.add_argument("--chunk-ms", type=_ints, default=[80, 160, 560, 1120], help="comma list of 80/160/560/1120")
    engine.add_argument("--seconds", type=float, default=10.0, help="audio per stream (default 10)")
    engine.add_argument("--no-sequential", action="store_true", help="skip the one-after-another baseline")
    engine.add_argument("--device", default="auto")
    engine.add_argument("--dtype", default="float32")
    engine.add_argument("--out", required=True, help="JSON results file")
    engine.add_argument("--markdown", help="append the table, with machine/date/command, to this file")
    engine.set_defaults(func=run_engine_bench)


def run_engine_bench(args: argparse.Namespace) -> int:
    from streamd.bench import batching_benchmark, machine_description, markdown_table
    from streamd.models import prepare_model

    unknown = [c for c in args.chunk_ms if c not in CHUNK_MS]
    if unknown:
        print(f"--chunk-ms: unsupported {unknown}; use {sorted(CHUNK_MS)}", file=sys.stderr)
        return 2
    model = prepare_model(args.model, args.device, args.dtype)
    device = next(model.parameters()).device
    rows = batching_benchmark(model, args.streams, [CHUNK_MS[c] for c in args.chunk_ms], args.seconds,
                              sequential=not args.no_sequential)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(device),
        "device": str(device),
        "dtype": args.dtype,
        "model": args.model,
        "arch": dict(model.cfg.get("streamd") or {}).get("arch", "unknown"),
        "command": "streamd " + shlex.join(sys.argv[1:]),
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    table = markdown_table(rows)
    print(table)
    if args.markdown:
        with open(args.markdown, "a") as md:
            md.write(f"\n### Engine: {meta['arch']} on {meta['device']} ({meta['dtype']})\n\n"
                     f"{meta['date']}, {meta['machine']}; `{meta['command']}`\n\n{table}\n")
    return 0
