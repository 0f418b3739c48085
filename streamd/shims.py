"""Import-time shims for NeMo's environment, applied once and only when needed.

* ``triton`` installed but unusable (no GPU driver: Ascend hosts, CPU containers) makes
  ``import nemo.collections.asr`` fail; :mod:`streamd.patches.triton` fixes it in memory.
* ``nv_one_logger`` missing from some mirrors/images: NeMo imports it unconditionally;
  :mod:`streamd.mocks.nv_one_logger` stands in for it.
* ``cuda-python`` installed (CUDA images): NeMo's NVRTC helper, compiling the CUDA-graph
  decoder's kernels, overwrites CPython's shared ``b" "`` object, after which no HTTP request
  parses; :mod:`streamd.patches.nemo_nvrtc` gives it a buffer of its own.

With a healthy triton, a real nv_one_logger and no cuda-python, nothing is replaced.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

from streamd.log import get_logger

log = get_logger(__name__)

MOCKED_PACKAGE = "nv_one_logger"
MOCK_PACKAGE = "streamd.mocks.nv_one_logger"
# What NeMo imports from nv_one_logger (nemo/lightning/one_logger_callback.py).
NV_ONE_LOGGER_MODULES = (
    "nv_one_logger.api.config",
    "nv_one_logger.training_telemetry.api.callbacks",
    "nv_one_logger.training_telemetry.api.config",
    "nv_one_logger.training_telemetry.api.training_telemetry_provider",
    "nv_one_logger.training_telemetry.integration.pytorch_lightning",
)

_applied: list[str] | None = None


class _MockPackageFinder(importlib.abc.MetaPathFinder):
    """Resolves ``nv_one_logger[.x]`` to the files of ``streamd.mocks.nv_one_logger[.x]``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != MOCKED_PACKAGE and not fullname.startswith(MOCKED_PACKAGE + "."):
            return None
        mock_spec = importlib.util.find_spec(MOCK_PACKAGE + fullname[len(MOCKED_PACKAGE) :])
        if mock_spec is None or mock_spec.origin is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, mock_spec.origin, submodule_search_locations=mock_spec.submodule_search_locations
        )


def _nv_one_logger_importable() -> bool:
    try:
        for name in NV_ONE_LOGGER_MODULES:
            importlib.import_module(name)
    except Exception:
        return False
    return True


def install_nv_one_logger_mock() -> None:
    """Serve ``nv_one_logger`` from the mock, replacing any half-imported real modules."""
    for name in [n for n in sys.modules if n == MOCKED_PACKAGE or n.startswith(MOCKED_PACKAGE + ".")]:
        del sys.modules[name]
    sys.meta_path.insert(0, _MockPackageFinder())


def apply_shims() -> list[str]:
    """Apply the shims this environment needs (idempotent); return what was applied."""
    global _applied
    if _applied is not None:
        return _applied
    applied: list[str] = []
    if importlib.util.find_spec("triton") is not None:
        from streamd.patches import triton as triton_patch

        applied += triton_patch.apply()
        if triton_patch.skipped_backends:
            log.info("triton backends skipped", backends=triton_patch.skipped_backends)
    if not _nv_one_logger_importable():
        install_nv_one_logger_mock()
        applied.append("nv_one_logger: mock package")
    from streamd.patches import nemo_nvrtc  # after the two above: it imports a NeMo module

    applied += nemo_nvrtc.apply()
    if applied:
        log.info("shims applied", shims=applied)
    else:
        log.debug("no shims needed")
    _applied = applied
    return applied


def overwritten_byte_objects() -> dict[int, int]:
    """CPython's shared one-byte ``bytes`` objects whose content is no longer their value:
    ``{value: byte it now holds}``. Native code that writes into a ``bytes`` buffer it did not
    allocate itself (NeMo's NVRTC helper did, into ``b" "``) changes that byte for every module
    of the process, and the failures appear far away (an HTTP parser, an unpickler)."""
    table = bytes(range(256))
    # A one-byte slice is the shared object for that value, whatever it holds now.
    held = {value: table[value : value + 1][0] for value in range(256)}
    return {value: byte for value, byte in held.items() if byte != value}
