"""The ``streamd`` console script: one sub-command per module in :mod:`streamd.commands`.

Each command module defines ``register(subparsers)`` which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from streamd.log import configure_logging

# Imported lazily in main() so `streamd --help` does not pay for torch/NeMo imports.
COMMAND_MODULES = (
    "serve",
    "transcribe",
    "model",
    "parity",
    "convert",
    "align",
    "bench",
    "tones",
    "doctor",
)
LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamd", description=__doc__.splitlines()[0])
    # choices: an unknown level is a usage error (exit 2, the valid levels named), not logging's traceback
    parser.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS,
                        help="debug|info|warning|error (default info)")
    parser.add_argument(
        "--log-format", default="auto", choices=("auto", "json", "console"),
        help="log rendering: JSON lines, readable console, or auto (console on a TTY)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"streamd.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    from streamd.devices import DeviceError  # torch: imported once a command runs

    try:
        return int(args.func(args) or 0)
    except DeviceError as exc:  # a device or dtype this machine cannot use: the user's to fix, no traceback
        print(f"streamd {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
