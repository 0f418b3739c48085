"""``streamd doctor [--json]``: check the environment before serving (docs/npu.md)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check the environment: versions, CUDA and NPU devices, shims, problems",
        description="Report torch, NeMo and streamd versions, the CUDA devices, torch_npu and whether the "
                    "Ascend runtime loads (with the NPU index to use for each device), triton and the shims "
                    "applied, and the default model. Exit code 1 when a problem was found (each with its fix).",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamd.doctor import environment_report, format_report

    report = environment_report()
    print(json.dumps(report, indent=1) if args.json else format_report(report), flush=True)
    return 1 if report["problems"] else 0
