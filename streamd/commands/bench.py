"""``streamd bench engine|server|offline``: measured speed and memory, as JSON plus a markdown table.

``engine`` steps the engine directly (throughput, step latency, batching gain); ``server``
drives a real server child process with real clients (overhead, real-time capacity, memory).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tarfile
from pathlib import Path
from typing import Any

from streamd.commands.parity import side_arg
from streamd.commands.transcribe import CHUNK_MS

SERVER_SCENARIOS = ("overhead", "capacity", "memory")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _words(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, not {text!r}")
    return text == "on"


def _frame_ms(text: str) -> int | None:
    if text == "chunk":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected milliseconds or 'chunk', not {text!r}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=".nemo file (untrained models are fine: speed only)")
    parser.add_argument("--chunk-ms", type=_ints, default=[80, 160, 560, 1120], help="comma list of 80/160/560/1120")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per stream (default 10)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, here and in the server (default 1, the server's default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--decoder-cuda-graphs", type=_on_off, default=True, metavar="on|off",
                        help="RNNT decoder label loop as CUDA graphs (CUDA only; default on, NeMo's default)")
    parser.add_argument("--encoder-cuda-graphs", type=_on_off, default=False, metavar="on|off",
                        help="replay the encoder's steady streaming steps from CUDA graphs (CUDA only; default off)")
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--markdown", help="append the tables, with machine/date/command, to this file")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (results as JSON and a markdown table)")
    kinds = parser.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    engine = kinds.add_parser("engine", help="engine throughput and batching gain (no network)")
    _common(engine)
    engine.add_argument("--streams", type=_ints, default=[1, 2, 4, 8, 16], help="comma list (default 1,2,4,8,16)")
    engine.add_argument("--no-sequential", action="store_true", help="skip the one-after-another baseline")
    engine.set_defaults(func=run_engine_bench)
    server = kinds.add_parser("server", help="server overhead, real-time capacity and memory (real clients)")
    _common(server)
    server.add_argument("--scenarios", type=_words, default=list(SERVER_SCENARIOS),
                        help=f"comma list of {','.join(SERVER_SCENARIOS)} (default all)")
    server.add_argument("--streams", type=int, default=16, help="streams for the overhead scenario (default 16)")
    server.add_argument("--repeats", type=int, default=5,
                        help="engine/server run pairs in the overhead scenario; the ratio is their median (default 5)")
    server.add_argument("--ramp", type=_ints, default=[1, 2, 4, 8, 16, 32, 64],
                        help="stream counts the capacity scenario tries, in order (default 1,2,4,...,64)")
    server.add_argument("--frame-ms", type=_frame_ms, default=80, metavar="MS|chunk",
                        help="audio per client frame in the capacity scenario: milliseconds, or 'chunk' for one "
                             "chunk per frame (default 80; at thousands of streams, small frames make the "
                             "benchmark's own client process the limit)")
    server.add_argument("--no-aligned", action="store_true",
                        help="capacity: skip the second ramp with all starts aligned")
    server.add_argument("--no-ceiling", action="store_true",
                        help="capacity: skip the engine-only ceiling ramp (e.g. when `bench engine` measures it)")
    server.add_argument("--client-processes", type=int, default=1,
                        help="capacity: spread the clients over this many processes (default 1: this one); each "
                             "level records the busiest one's CPU share")
    server.add_argument("--max-batch", type=int, default=64, help="the server's max_batch (default 64)")
    server.add_argument("--batch-window-ms", type=float, default=0.0,
                        help="the server's batch_window_ms (default 0: step at once)")
    server.add_argument("--engine-process", action="store_true",
                        help="the server runs its engine in a child process (engine_process=true)")
    server.add_argument("--server-log-dir", type=Path,
                        help="keep each scenario's server log here (default: temporary; errors quote its tail)")
    server.add_argument("--soak-minutes", type=float, default=10.0, help="open/close soak length (default 10)")
    server.add_argument("--soak-streams", type=int, default=8,
                        help="open/close soak: concurrent clients, each opening session after session (default 8)")
    server.add_argument("--soak-realtime", action="store_true",
                        help="open/close soak: clients send at the audio's pace (default: as fast as accepted)")
    server.set_defaults(func=run_server_bench)
    offline = kinds.add_parser("offline", help="Whisper encoder/generate and aligner forward/alignment times "
                               "per device and dtype")
    offline.add_argument("--whisper", help="transformers Whisper directory (e.g. from streamd convert ct2-whisper)")
    offline.add_argument("--aligner", help="transformers Wav2Vec2ForCTC directory (MMS forced-aligner layout)")
    offline.add_argument("--transcript", action="append", default=[],
                         help="aligner text: once for all files, or once per --audio file in order")
    offline.add_argument("--audio", nargs="+", required=True, metavar="FILE", help="audio files")
    offline.add_argument("--side", type=side_arg, action="append", metavar="device=D,dtype=T",
                         help="a device and dtype to time, repeatable (default device=cpu,dtype=float32)")
    offline.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    offline.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default 1)")
    offline.add_argument("--runs", type=int, default=3, help="timed runs, averaged (default 3)")
    offline.add_argument("--out", required=True, help="JSON results file")
    offline.add_argument("--markdown", help="append the table, with machine/date/command, to this file")
    offline.set_defaults(func=run_offline_bench)


def _sizes(chunk_ms: list[int]) -> list[tuple[int, int]] | None:
    unknown = [c for c in chunk_ms if c not in CHUNK_MS]
    if unknown:
        print(f"--chunk-ms: unsupported {unknown}; use {sorted(CHUNK_MS)}", file=sys.stderr)
        return None
    return [CHUNK_MS[c] for c in chunk_ms]


def _load(args: argparse.Namespace) -> Any:
    import torch

    from streamd.engine.loading import prepare_model

    torch.set_num_threads(args.threads)
    return prepare_model(args.model, args.device, args.dtype, args.decoder_cuda_graphs, args.encoder_cuda_graphs)


def _model_meta(args: argparse.Namespace, device: Any, config: Any) -> dict[str, Any]:
    """What a streaming benchmark ran on: one model (its config), one device and dtype."""
    from streamd.bench.machine import machine_description

    origin = config.get("streamd") or {}
    arch = origin.get("arch", "unknown")
    # An untrained model calibrated to a trained model's token rate (streamd.models.token_rate).
    tokens_per_second = (origin.get("token_rate") or {}).get("tokens_per_second")
    calibrated = f", calibrated to {tokens_per_second:g} tokens/s" if tokens_per_second else ""
    notes = ("" if args.decoder_cuda_graphs else ", decoder CUDA graphs off") + (
        ", encoder CUDA graphs on" if args.encoder_cuda_graphs else "")  # where not the default
    # args.threads: the run's setting, here and in its servers (it may load no model here).
    return {"machine": machine_description(device, args.threads), "device": str(device), "dtype": args.dtype,
            "model": args.model, "arch": arch, "token_rate_per_s": tokens_per_second,
            "decoder_cuda_graphs": "on" if args.decoder_cuda_graphs else "off",
            "encoder_cuda_graphs": "on" if args.encoder_cuda_graphs else "off",
            "title": f"{arch}{calibrated} on {device} ({args.dtype}{notes})"}


def _loaded_meta(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    return _model_meta(args, next(model.parameters()).device, model.cfg)


def _saved_meta(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`_model_meta` from the ``.nemo`` archive's config, without loading the model (on a
    GPU that is half a minute and its memory, for a run whose servers load their own)."""
    from omegaconf import OmegaConf

    from streamd.devices import resolve_device

    with tarfile.open(args.model, "r:*") as archive:
        member = next((m for m in archive.getmembers() if Path(m.name).name == "model_config.yaml"), None)
        if member is None:
            raise ValueError("holds no model_config.yaml: not a .nemo model")
        config = OmegaConf.create(archive.extractfile(member).read().decode())  # type: ignore[union-attr]
    return _model_meta(args, resolve_device(args.device), config)


def _report(args: argparse.Namespace, meta: dict[str, Any], results: list[dict[str, Any]],
            tables: list[tuple[str, str]]) -> int:
    """Write the JSON results, print the tables, append them to ``--markdown``."""
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **meta,
            "command": "streamd " + shlex.join(sys.argv[1:])}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    text = "".join(f"\n### {title}: {meta['title']}\n\n"
                   f"{meta['date']}, {meta['machine']}; `{meta['command']}`\n\n{table}\n" for title, table in tables)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as md:
            md.write(text)
    return 0


def run_engine_bench(args: argparse.Namespace) -> int:
    from streamd.bench.engine import batching_benchmark, engine_table

    sizes = _sizes(args.chunk_ms)
    if sizes is None:
        return 2
    model = _load(args)
    rows = batching_benchmark(model, args.streams, sizes, args.seconds, sequential=not args.no_sequential)
    return _report(args, _loaded_meta(args, model), rows, [("Engine", engine_table(rows))])


def run_server_bench(args: argparse.Namespace) -> int:
    from streamd.bench import server as server_bench

    sizes = _sizes(args.chunk_ms)
    unknown = set(args.scenarios) - set(SERVER_SCENARIOS)
    if sizes is None or unknown:
        if unknown:
            print(f"--scenarios: unknown {sorted(unknown)}; use {','.join(SERVER_SCENARIOS)}", file=sys.stderr)
        return 2
    # Only the engine-only ceiling and the cache size need the model here: the servers load their own.
    in_process = bool({"overhead", "memory"} & set(args.scenarios)) or not args.no_ceiling
    model = _load(args) if in_process or not Path(args.model).is_file() else None
    try:  # before the runs: a file that is no model fails now, not after them
        meta = _saved_meta(args) if model is None else _loaded_meta(args, model)
    except (ValueError, tarfile.TarError) as exc:
        print(f"streamd bench server: {args.model}: {exc}", file=sys.stderr)
        return 2
    meta["batch_window_ms"] = args.batch_window_ms
    meta["engine_process"] = args.engine_process
    if args.batch_window_ms:
        meta["title"] += f", server batch window {args.batch_window_ms:g} ms"
    if args.engine_process:
        meta["title"] += ", engine in its own process"
    if args.server_log_dir is not None:
        try:
            args.server_log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"streamd bench server: --server-log-dir: {exc}", file=sys.stderr)
            return 2
    settings = {"threads": args.threads, "device": args.device, "dtype": args.dtype,
                "decoder_cuda_graphs": args.decoder_cuda_graphs, "encoder_cuda_graphs": args.encoder_cuda_graphs,
                "batch_window_ms": args.batch_window_ms, "engine_process": args.engine_process}
    results: list[dict[str, Any]] = []
    tables = []
    if "overhead" in args.scenarios:
        rows = [server_bench.overhead(model, args.model, size, args.streams, args.seconds, settings,
                                        repeats=args.repeats, log_dir=args.server_log_dir)
                for size in sizes]
        results += rows
        tables.append(("Server overhead", server_bench.overhead_table(rows)))
    if "capacity" in args.scenarios:
        rows = [server_bench.capacity(model, args.model, size, args.ramp, args.seconds, settings,
                                        args.max_batch, frame_ms=args.frame_ms, aligned=not args.no_aligned,
                                        ceiling=not args.no_ceiling, client_processes=args.client_processes,
                                        log_dir=args.server_log_dir)
                for size in sizes]
        results += rows
        tables.append(("Real-time capacity", server_bench.capacity_table(rows)))
    if "memory" in args.scenarios:
        row = server_bench.soak(args.model, args.soak_minutes, args.soak_streams, args.chunk_ms[-1], settings,
                                log_dir=args.server_log_dir, realtime=args.soak_realtime)
        row["cache_bytes_per_stream"] = server_bench.cache_bytes_per_stream(model)
        results.append(row)
        tables.append(("Memory", server_bench.memory_table(row)))
    return _report(args, meta, results, tables)


def run_offline_bench(args: argparse.Namespace) -> int:
    import torch

    from streamd.bench import offline as offline_bench
    from streamd.bench.machine import machine_description
    from streamd.devices import DeviceError
    from streamd.offline.report import SideSpec

    if not (args.whisper or args.aligner):
        print("streamd bench offline: give --whisper DIR and/or --aligner DIR", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    sides = args.side or [SideSpec()]
    try:
        rows = []
        if args.whisper:
            rows += offline_bench.whisper_rows(args.whisper, args.audio, sides, args.warmup, args.runs)
        if args.aligner:
            rows += offline_bench.aligner_rows(args.aligner, args.audio, args.transcript, sides, args.warmup,
                                               args.runs)
    except (DeviceError, ValueError, OSError) as exc:
        print(f"streamd bench offline: {exc}", file=sys.stderr)
        return 2
    gpu = next((torch.device(s.device) for s in sides if s.device.startswith("cuda")), None)
    machine = machine_description(torch.device("cpu")) + (f"; {machine_description(gpu)}" if gpu else "")
    meta = {"machine": machine, "whisper": args.whisper, "aligner": args.aligner, "audio": args.audio,
            "sides": [f"device={s.device},dtype={s.dtype}" for s in sides],
            "title": "Whisper and aligner, " + "; ".join(f"{s.device} {s.dtype}" for s in sides)}
    return _report(args, meta, rows, [("Offline", offline_bench.offline_table(rows))])
