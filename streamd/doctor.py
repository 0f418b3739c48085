"""What a user needs to know before serving, in one report: versions, devices (CUDA, Ascend NPU
and which physical device each ``npu:N`` is), the import-time shims, the default model, and the
problems found with their fixes. ``streamd doctor`` prints it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch

from streamd import __version__, npu
from streamd.devices import resolve_device
from streamd.models.bundled import default_model_path

# Environment variables that change how streamd finds and uses its devices, reported as set.
ENVIRONMENT_VARIABLES = (
    "TORCH_DEVICE_BACKEND_AUTOLOAD", npu.VISIBLE_DEVICES_VARIABLE, npu.ALLOCATOR_VARIABLE,
    "ASCEND_TOOLKIT_HOME", "CUDA_VISIBLE_DEVICES",
)


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_report() -> dict[str, Any]:
    available = torch.cuda.is_available()
    devices = [{"device": f"cuda:{index}", "name": torch.cuda.get_device_name(index),
                "memory_gib": round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1)}
               for index in range(torch.cuda.device_count())] if available else []
    return {"available": available, "devices": devices}


def npu_report() -> dict[str, Any]:
    """torch_npu, whether the Ascend runtime loads (and why not), and the NPUs this process sees."""
    state = npu.load_torch_npu()
    count = npu.device_count()
    return {
        "torch_npu": state.version if state.installed else None,
        "runtime_loads": state.loaded,
        "problem": state.problem if state.installed else None,
        "missing_library": state.missing_library,
        "devices": count,
        "logical_devices": npu.logical_devices(count, os.environ.get(npu.VISIBLE_DEVICES_VARIABLE)),
    }


def nemo_and_shims_report() -> dict[str, Any]:
    """NeMo's version and whether ``nemo.collections.asr`` imports, after the shims it needs
    (which, and what triton looked like)."""
    from streamd.nemo_import import import_nemo_asr
    from streamd.shims import apply_shims

    report: dict[str, Any] = {"nemo": _distribution_version("nemo-toolkit"), "nemo_imports": True,
                              "nemo_error": None, "triton": _distribution_version("triton"),
                              "triton_skipped_backends": {}, "shims": []}
    try:
        import_nemo_asr()
    except Exception as exc:  # reported, not raised: the rest of the report still helps
        report["nemo_imports"], report["nemo_error"] = False, f"{type(exc).__name__}: {exc}"
    try:
        report["shims"] = apply_shims()  # applied once: the list import_nemo_asr caused
    except Exception as exc:
        report["shims"] = [f"failed: {type(exc).__name__}: {exc}"]
    if report["triton"] is not None:
        from streamd.patches import triton as triton_patch

        report["triton_skipped_backends"] = dict(triton_patch.skipped_backends)
    return report


def default_model_report() -> dict[str, Any]:
    """The model `serve` and `transcribe` use when none is named, and whether its file is there."""
    path = default_model_path()
    return {"path": str(path), "exists": path.is_file()}


def problems(report: dict[str, Any]) -> list[str]:
    """What stands between this environment and serving, each with its fix."""
    found = []
    if not report["nemo_imports"]:
        found.append(f"NeMo does not import: {report['nemo_error']}")
    npu_part = report["npu"]
    if npu_part["problem"]:
        found.append(npu_part["problem"])
    elif npu_part["torch_npu"] is not None and npu_part["devices"] == 0:
        visible = report["environment"].get(npu.VISIBLE_DEVICES_VARIABLE)
        found.append("torch_npu loads but sees no NPU (is the driver installed? npu-smi info lists the devices"
                     + (f"; {npu.VISIBLE_DEVICES_VARIABLE}={visible}" if visible is not None else "") + ")")
    if not report["default_model"]["exists"]:
        found.append(f"the shipped model is missing ({report['default_model']['path']}): reinstall streamd, or "
                     "name a model (serve model=PATH, transcribe --model PATH)")
    return found


def environment_report() -> dict[str, Any]:
    """The whole report (imports NeMo: seconds)."""
    report: dict[str, Any] = {
        "streamd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda": cuda_report(),
        "npu": npu_report(),
        "auto_device": str(resolve_device("auto")),
        **nemo_and_shims_report(),
        "default_model": default_model_report(),
        "environment": {name: os.environ[name] for name in ENVIRONMENT_VARIABLES if name in os.environ},
    }
    report["problems"] = problems(report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned lines for a terminal."""
    cuda, npu_part = report["cuda"], report["npu"]
    build = f"CUDA {report['torch_cuda_build']} build" if report["torch_cuda_build"] else "CPU build"
    cuda_line = ", ".join(f"{d['device']} {d['name']} ({d['memory_gib']} GiB)" for d in cuda["devices"]) \
        or "not available"
    if npu_part["torch_npu"] is None:
        npu_line = "torch_npu not installed"
    elif not npu_part["runtime_loads"]:
        npu_line = f"torch_npu {npu_part['torch_npu']}: the Ascend runtime does not load"
    else:
        mapping = ", ".join(f"{d['device']} = device {d['device_id']}" for d in npu_part["logical_devices"])
        npu_line = f"torch_npu {npu_part['torch_npu']}: {npu_part['devices']} NPU(s)" + (f": {mapping}" if mapping
                                                                                           else "")
    nemo = f"{report['nemo']} ({'imports' if report['nemo_imports'] else 'does NOT import'})"
    triton = report["triton"] or "not installed"
    if report["triton_skipped_backends"]:
        triton += f" (backends skipped: {', '.join(report['triton_skipped_backends'])})"
    default = report["default_model"]
    rows = [
        ("streamd", f"{report['streamd']} (Python {report['python']})"),
        ("torch", f"{report['torch']} ({build})"),
        ("NeMo", nemo),
        ("CUDA", cuda_line),
        ("NPU", npu_line),
        ("device auto", report["auto_device"]),
        ("triton", triton),
        ("shims", "; ".join(report["shims"]) or "none needed"),
        ("default model", default["path"] + ("" if default["exists"] else " (missing)")),
        *((name, value) for name, value in report["environment"].items()),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if report["problems"]:
        lines += ["", "problems:"] + [f"  - {problem}" for problem in report["problems"]]
    else:
        lines += ["", "no problems found"]
    return "\n".join(lines)
