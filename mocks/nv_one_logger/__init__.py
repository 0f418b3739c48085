"""No-op stand-in for NVIDIA's ``nv_one_logger`` training telemetry.

NeMo imports it unconditionally (``nemo.lightning.one_logger_callback``) and instantiates its
callback whenever a model is built, but streamd never trains through Lightning and never sends
telemetry. Some mirrors and images lack the package; this mock provides exactly the names NeMo
imports so NeMo imports and runs. Served under the name ``nv_one_logger`` by
:func:`streamd.shims.install_nv_one_logger_mock` only when the real package cannot be imported.
"""

STREAMD_MOCK = True
