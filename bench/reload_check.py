"""Load one .nemo twice in one process, with torch alone and through NeMo, on each device.

    python bench/reload_check.py MODEL.nemo

On torch 2.11 (CUDA) a second load of a .nemo in one process once failed with a weights-only
unpickling error although the first load of the same file had worked; this shows which layer
fails and when. Prints one ``load ...: ok|FAILED`` line per attempt.
"""

from __future__ import annotations

import sys
import tarfile
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from streamd.models import load_model


def attempt(label: str, load: Callable[[], object]) -> None:
    try:
        load()
        print(f"load {label}: ok", flush=True)
    except Exception as exc:  # report every failure and go on to the next attempt
        print(f"load {label}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)


def main() -> int:
    path = sys.argv[1]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(path) as tar:
            tar.extractall(tmp, filter="data")
        weights = next(Path(tmp).rglob("*.ckpt"))
        for device in devices:
            for n in (1, 2):
                attempt(f"torch {device} #{n}", partial(torch.load, weights, map_location=device))
        for device in devices:
            for n in (1, 2):
                attempt(f"nemo {device} #{n}", partial(load_model, path, device))
        attempt("torch cpu after nemo", partial(torch.load, weights, map_location="cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
