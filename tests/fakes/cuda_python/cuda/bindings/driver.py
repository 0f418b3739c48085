"""Fake ``cuda.bindings.driver``: loads no module, finds a named kernel."""

from cuda.bindings._results import CUresult


def cuModuleLoadData(image):
    return CUresult.CUDA_SUCCESS, "module"


def cuModuleGetFunction(module, name):
    return CUresult.CUDA_SUCCESS, f"kernel {name.decode()}"
