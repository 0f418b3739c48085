"""torch_npu and the Ascend runtime: loading torch_npu on demand, saying why it cannot load and
how to fix that, and which Ascend device a logical ``npu:N`` is.

torch_npu is imported here only, once per process: streamd/__init__.py keeps ``import torch``
from importing it on its own. Its import fails in two ways a user can fix: the package is not
installed, or it is but the Ascend runtime's libraries (CANN: ``libhccl.so``,
``libascendcl.so``, ...) are not on the library path because the toolkit's ``set_env.sh`` was
not sourced in this shell.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

VISIBLE_DEVICES_VARIABLE = "ASCEND_RT_VISIBLE_DEVICES"
ALLOCATOR_VARIABLE = "PYTORCH_NPU_ALLOC_CONF"
# Where CANN's environment script lies after a root install, then a user's: CANN 8.5 installs
# into Ascend/cann, earlier releases into Ascend/ascend-toolkit.
SET_ENV_SCRIPTS = tuple(
    Path(root, "Ascend", kind, "set_env.sh")
    for root in ("/usr/local", Path.home())
    for kind in ("cann", "ascend-toolkit")
)
_MISSING_LIBRARY = re.compile(r"(\S+\.so[.\d]*): cannot open shared object file")


@dataclass(frozen=True)
class TorchNpuState:
    """What importing torch_npu gave in this process."""

    installed: bool
    version: str | None  # the installed distribution's, when its metadata is there
    problem: str | None  # why it cannot be used, with the fix; None once imported
    missing_library: str | None = None  # the runtime library the import could not open

    @property
    def loaded(self) -> bool:
        return self.problem is None


def set_env_hint() -> str:
    """How to put the Ascend runtime on the library path, naming the script where it is found."""
    found = next((path for path in SET_ENV_SCRIPTS if path.is_file()), None)
    if found is not None:
        return f"source {found} (the CANN toolkit's environment script) in the shell that runs streamd"
    return ("source the CANN toolkit's set_env.sh in the shell that runs streamd (CANN 8.5: "
            "/usr/local/Ascend/cann/set_env.sh; earlier: /usr/local/Ascend/ascend-toolkit/set_env.sh; "
            "neither exists here: is CANN installed?)")


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version("torch_npu")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def load_torch_npu() -> TorchNpuState:
    """Import torch_npu (once per process; never raises) and say whether it can be used."""
    if sys.modules.get("torch_npu") is None and importlib.util.find_spec("torch_npu") is None:
        import torch

        release = torch.__version__.split("+")[0]
        return TorchNpuState(False, None, (
            f"torch_npu is not installed (pip install 'torch_npu=={release}.*', the release of this torch, "
            "or STREAMD_TORCH=npu ./setup_env.sh)"))
    # The caching allocator fragments badly under streaming's many small, varying tensors;
    # expandable segments is Ascend's recommendation. torch_npu reads it when its allocator
    # starts; a user's own setting wins.
    os.environ.setdefault(ALLOCATOR_VARIABLE, "expandable_segments:True")
    version = _installed_version()
    try:
        module = importlib.import_module("torch_npu")
    except Exception as exc:  # the package's own import raised: the runtime is missing, or a mismatch
        return _import_failure(version, exc)
    return TorchNpuState(True, version or getattr(module, "__version__", None), None)


def _import_failure(version: str | None, exc: Exception) -> TorchNpuState:
    import torch

    label = f"torch_npu {version}" if version else "torch_npu"
    missing = _MISSING_LIBRARY.search(str(exc))
    if missing is not None:
        return TorchNpuState(True, version, (
            f"{label} is installed but the Ascend runtime is not loadable ({missing.group(1)} is not on the "
            f"library path); fix: {set_env_hint()}"), missing.group(1))
    return TorchNpuState(True, version, (
        f"{label} is installed but does not import ({type(exc).__name__}: {exc}); torch_npu must be the "
        f"release of this torch ({torch.__version__}) and CANN the release torch_npu was built for"))


def device_count() -> int:
    """NPUs this process sees (after ASCEND_RT_VISIBLE_DEVICES); 0 when torch_npu cannot load."""
    if not load_torch_npu().loaded:
        return 0
    import torch

    return torch.npu.device_count() if torch.npu.is_available() else 0


def visible_device_ids(value: str | None) -> list[int] | None:
    """The Ascend device IDs (logical IDs, as ``npu-smi info -m`` lists them) that
    ASCEND_RT_VISIBLE_DEVICES makes visible, in order: entry N is ``npu:N``. None when unset
    (``npu:N`` is device N). Read as the runtime reads it: comma-separated, up to the first entry
    that is not a device ID (``"1, 2"`` is device 1 only)."""
    if value is None:
        return None
    ids: list[int] = []
    for part in value.split(","):
        if not part.isdigit():
            break
        ids.append(int(part))
    return ids


def logical_devices(count: int, visible: str | None) -> list[dict[str, int | str | None]]:
    """``[{"device": "npu:N", "device_id": ID}]`` for the ``count`` NPUs this process sees:
    which Ascend device each ``npu:N`` is (None where ASCEND_RT_VISIBLE_DEVICES lists fewer)."""
    ids = visible_device_ids(visible)
    if ids is None:
        return [{"device": f"npu:{index}", "device_id": index} for index in range(count)]
    return [{"device": f"npu:{index}", "device_id": ids[index] if index < len(ids) else None}
            for index in range(count)]
