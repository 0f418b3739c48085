"""Result enums and the write-into-bytes behaviour shared by the fake modules."""

import ctypes
import enum


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0


class nvrtcResult(enum.IntEnum):
    NVRTC_SUCCESS = 0


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0


def write_into(buffer: bytes, data: bytes) -> None:
    """What a Cython ``char*`` parameter lets C code do: write into the bytes object itself."""
    assert len(data) <= len(buffer)
    ctypes.memmove(ctypes.cast(ctypes.c_char_p(buffer), ctypes.c_void_p).value, data, len(data))
