"""Keep NeMo's NVRTC helper from overwriting CPython's shared ``b" "`` object.

NeMo's CUDA-graph decoders (RNNT/TDT label looping, CTC, beam search) compile their loop
condition kernels with ``nemo.core.utils.cuda_python_utils.run_nvrtc``, which reads the compiler
log into ``buf = b" " * size``. An empty log has size 1 (its NUL), and ``b" " * 1`` is not a new
buffer but CPython's one shared ``b" "`` object: NVRTC writes the NUL into it, and from then on
every ``b" "`` in the process is ``b"\\x00"``. Anything that splits bytes on spaces breaks: the
websockets HTTP parser then rejects every request (``invalid HTTP request line: GET /readyz
HTTP/1.1``) and closes the connection without an answer — a server that stops answering as soon
as the decoder's first CUDA-graph capture ran (found on the lent H100, 2026-11-27).

Fixed in memory: the module's ``nvrtc`` is wrapped so that the log is read into a buffer of its
own (``run_nvrtc`` never reads the log). Applied only where ``cuda.bindings`` is importable (else
``run_nvrtc`` never runs) and ``run_nvrtc`` still allocates its log buffer that way.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

UTILS_MODULE = "nemo.core.utils.cuda_python_utils"
SHARED_BUFFER = 'b" " * size'  # run_nvrtc's log buffer (NeMo 2.x-3.0)


class NvrtcWithPrivateLogBuffer:
    """``cuda.bindings.nvrtc`` with ``nvrtcGetProgramLog`` writing into a fresh buffer."""

    def __init__(self, nvrtc: Any) -> None:
        self._nvrtc = nvrtc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nvrtc, name)

    def nvrtcGetProgramLog(self, prog: Any, log: bytes) -> Any:
        # bytes(n) is always a new object for n >= 1, unlike b" " * 1.
        return self._nvrtc.nvrtcGetProgramLog(prog, bytes(len(log)))


def _cuda_python_importable() -> bool:
    try:
        return importlib.util.find_spec("cuda.bindings") is not None
    except ImportError:  # no ``cuda`` package at all
        return False


def apply() -> list[str]:
    """Wrap ``nvrtc`` in NeMo's helper module if it needs it; return what was applied."""
    if not _cuda_python_importable():
        return []
    utils = importlib.import_module(UTILS_MODULE)
    if not getattr(utils, "CUDA_PYTHON_AVAILABLE", False) or isinstance(utils.nvrtc, NvrtcWithPrivateLogBuffer):
        return []
    try:
        needed = SHARED_BUFFER in inspect.getsource(utils.run_nvrtc)
    except (OSError, TypeError):  # no source to read: wrapping is harmless, so wrap
        needed = True
    if not needed:
        return []
    utils.nvrtc = NvrtcWithPrivateLogBuffer(utils.nvrtc)
    return ["nemo run_nvrtc: program log into a private buffer"]
