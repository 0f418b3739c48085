"""`streamd bench`: placeholder until implemented."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="(not implemented yet)")
    parser.set_defaults(func=lambda args: 2)
