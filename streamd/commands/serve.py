"""``streamd serve KEY=VALUE ...``: run the WebSocket server (settings in docs/server.md)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

from streamd.config import ConfigError, ServeConfig, load_config


def _settings_help() -> str:
    """Every key with its default, written as ``serve`` accepts it back (``true``, ``[]``)."""
    lines = ["settings (KEY=VALUE, defaults shown):"]
    for f in dataclasses.fields(ServeConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {f.name}={_override_value(default)}")
    return "\n".join(lines)


def _override_value(value: object) -> str:
    """``value`` in Hydra's override grammar."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return f"[{','.join(map(_override_value, value))}]"
    return repr(value) if value == "" else str(value)


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
    if (problem := _access_problem(settings)) is not None:
        print(f"streamd serve: {problem}", file=sys.stderr)
        return 2
    from streamd.models.bundled import model_or_default
    from streamd.server.app import run_server

    settings.model = model_or_default(settings.model)
    return asyncio.run(run_server(settings))


def _access_problem(settings: ServeConfig) -> str | None:
    """Why the access settings cannot be served (docs/security.md), or None."""
    from streamd.server.access import AccessError, is_loopback, load_tokens
    from streamd.server.app import tls_context

    try:
        tokens = load_tokens(settings.auth_tokens_file)
    except AccessError as exc:
        return str(exc)
    if not tokens and not is_loopback(settings.host) and not settings.allow_unauthenticated:
        return (f"host={settings.host} is reachable from other machines and no tokens are set: give "
                "auth_tokens_file=PATH (or $STREAMD_AUTH_TOKENS), or allow_unauthenticated=true if "
                "something in front of streamd authenticates (docs/security.md)")
    try:
        tls_context(settings.tls_cert, settings.tls_key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return f"tls_cert/tls_key cannot be used: {exc}"
    return None
