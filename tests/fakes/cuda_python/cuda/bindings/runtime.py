"""Fake ``cuda.bindings.runtime``: only its error type (NeMo's assert_drv checks it)."""

from cuda.bindings._results import cudaError_t  # noqa: F401
