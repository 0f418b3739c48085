"""``streamd serve KEY=VALUE ...``: run the WebSocket server (settings in docs/server.md)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

from omegaconf import MISSING

from streamd.config import ConfigError, ServeConfig, load_config


def _settings_help() -> str:
    lines = ["settings (KEY=VALUE, defaults shown):"]
    for f in dataclasses.fields(ServeConfig):
        lines.append(f"  {f.name}={'PATH (required)' if f.default is MISSING else f.default}")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the streaming WebSocket server",
        description="Serve streaming transcription over WebSocket (protocol: docs/protocol.md).",
        epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. model=m.nemo port=8765")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_config(ServeConfig, args.overrides)
    except ConfigError as exc:
        print(f"streamd serve: {exc}", file=sys.stderr)
        return 2
    from streamd.devices import parse_dtype, resolve_device

    # The model loads on the engine's worker (a thread, or a process of its own): a device or dtype
    # this machine cannot use fails here, with exit code 2 (streamd.cli), instead of in there.
    # `auto` always resolves (the CPU at worst) and is left to the worker, which warns once if it
    # passes over an NPU that cannot load.
    if settings.device.strip().lower() != "auto":
        resolve_device(settings.device)
    parse_dtype(settings.dtype)
    from streamd.server import run_server

    return asyncio.run(run_server(settings))
