"""streamd: a streaming speech-recognition daemon.

NeMo cache-aware FastConformer-RNNT models behind an asyncio WebSocket server that batches the
ready audio chunks of all connections into one model step. NeMo itself is imported lazily
through :func:`streamd.nemo_import.import_nemo_asr`, which applies the import-time shims first.
"""

import os

__version__ = "0.1.0"

# `import torch` imports every installed device-backend extension (entry point group
# "torch.backends"), and torch_npu's raises there when the Ascend runtime is not on the library
# path (CANN's set_env.sh not sourced): every command would die inside `import torch`, --device
# cpu included. streamd imports torch_npu itself, only when an NPU is asked for or probed
# (streamd.npu), where a failure becomes a diagnosis. torch reads this variable during its own
# import, so it is set here: the package imports before anything in it imports torch, and child
# processes (the engine process) inherit it. A user's own setting wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
