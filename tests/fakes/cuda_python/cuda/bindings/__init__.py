"""A stand-in for NVIDIA's ``cuda-python`` (``cuda.bindings``) on machines without a GPU: just
what NeMo's ``run_nvrtc`` calls, writing its outputs into the caller's ``bytes`` buffers as the
real Cython bindings do (``char*`` arguments point into the object)."""

__version__ = "13.0.0"
