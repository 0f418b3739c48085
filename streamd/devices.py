"""Device and dtype selection: ``auto|cpu|cuda[:N]|npu[:N]`` and ``float32|float16|bfloat16``."""

from __future__ import annotations

import functools
import os
import re

import torch

from streamd import npu
from streamd.log import get_logger

log = get_logger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class DeviceError(RuntimeError):
    """A requested device or dtype cannot be used on this machine."""


def parse_dtype(name: str) -> torch.dtype:
    """``float32|float16|bfloat16`` (also ``fp32``/``fp16``/``bf16``) as a torch dtype."""
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise DeviceError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[key]


def _npu_available() -> bool:
    """True when torch_npu loads and sees an NPU (never raises). An installed torch_npu that
    cannot load is passed over with one warning saying why and how to fix it."""
    state = npu.load_torch_npu()
    if state.installed and not state.loaded:
        _warn_npu_passed_over(state.problem or "")
    return npu.device_count() > 0


@functools.cache  # once per process, however many devices are resolved
def _warn_npu_passed_over(problem: str) -> None:
    log.warning("device auto: torch_npu cannot load, so no NPU is used", reason=problem)


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a device spec into a usable ``torch.device`` or raise :class:`DeviceError`.

    ``auto`` prefers an NPU, then CUDA, then the CPU.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        if _npu_available():
            return resolve_device("npu")
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")
    match = re.fullmatch(r"(cpu|cuda|npu)(?::(\d+))?", spec)
    if not match:
        raise DeviceError(f"unknown device {spec!r}: use auto, cpu, cuda[:N] or npu[:N]")
    kind, index_text = match.group(1), match.group(2)
    index = int(index_text) if index_text is not None else 0
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda or "none (this torch is a CPU build)"
            raise DeviceError(
                f"device {spec!r} requested but CUDA is not available (torch CUDA version: {built}; "
                "is the NVIDIA driver installed and a GPU visible?)"
            )
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    state = npu.load_torch_npu()
    if not state.loaded:
        raise DeviceError(f"device {spec!r}: {state.problem}")
    if not torch.npu.is_available():
        visible = os.environ.get(npu.VISIBLE_DEVICES_VARIABLE)
        raise DeviceError(
            f"device {spec!r} requested: torch_npu loaded but no Ascend NPU is visible (is the driver "
            f"installed? npu-smi info lists the devices; {npu.VISIBLE_DEVICES_VARIABLE}="
            f"{visible if visible is not None else '(unset)'})"
        )
    if index >= torch.npu.device_count():
        raise DeviceError(f"device {spec!r}: only {torch.npu.device_count()} NPU(s) present")
    return torch.device("npu", index)


def check_dtype_supported(device: torch.device, dtype: torch.dtype) -> None:
    """Refuse combinations that cannot work, with a message that says why."""
    if device.type == "cpu" and dtype == torch.float16:
        # CPU float16 matmuls exist but many conv/LSTM kernels do not; bfloat16 is the CPU half type.
        log.warning("float16 on CPU is slow and partly unsupported; prefer bfloat16")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{device} does not support bfloat16")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)


def device_fault(device: torch.device) -> str | None:
    """Why ``device`` no longer runs work, or None when it does: a one-element computation,
    waited for. After a failed model call this tells a fault of that batch (a bug, memory)
    from a device that is gone: a CUDA error such as an illegal memory access leaves the
    process's context unusable, and every later call fails."""
    try:
        (torch.ones(1, device=device) + 1).cpu()  # .cpu() waits for the device
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
