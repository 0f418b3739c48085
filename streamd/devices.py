"""Device and dtype selection: ``auto|cpu|cuda[:N]|npu[:N]`` and ``float32|float16|bfloat16``."""

from __future__ import annotations

import importlib
import os
import re

import torch

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
    """True when torch_npu imports and sees at least one NPU (never raises)."""
    try:
        importlib.import_module("torch_npu")
    except Exception:
        return False
    return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def _load_torch_npu() -> None:
    # The caching allocator fragments badly under streaming's many small, varying tensors;
    # expandable segments is Ascend's recommendation. A user's own setting wins.
    os.environ.setdefault("PYTORCH_NPU_ALLOC_CONF", "expandable_segments:True")
    try:
        importlib.import_module("torch_npu")
    except ImportError as exc:
        raise DeviceError(
            "device 'npu' needs the optional package torch_npu (pip install 'streamd[npu]' "
            f"matching your CANN and torch versions): {exc}"
        ) from exc


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
    _load_torch_npu()
    if not torch.npu.is_available():
        raise DeviceError(f"device {spec!r} requested: torch_npu imported but no Ascend NPU is visible")
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
