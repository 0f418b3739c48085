"""Fake ``cuda.bindings.nvrtc``: compiles nothing, logs nothing (a log of size 1: its NUL)."""

from cuda.bindings._results import nvrtcResult, write_into

PTX = b"// fake ptx\x00"


def nvrtcCreateProgram(src, name, num_headers, headers, include_names):
    return nvrtcResult.NVRTC_SUCCESS, object()


def nvrtcCompileProgram(prog, num_options, options):
    return (nvrtcResult.NVRTC_SUCCESS,)


def nvrtcGetProgramLogSize(prog):
    return nvrtcResult.NVRTC_SUCCESS, 1


def nvrtcGetProgramLog(prog, log):
    write_into(log, b"\x00")
    return (nvrtcResult.NVRTC_SUCCESS,)


def nvrtcGetPTXSize(prog):
    return nvrtcResult.NVRTC_SUCCESS, len(PTX)


def nvrtcGetPTX(prog, ptx):
    write_into(ptx, PTX)
    return (nvrtcResult.NVRTC_SUCCESS,)
