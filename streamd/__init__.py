"""streamd: a streaming speech-recognition daemon.

NeMo cache-aware FastConformer-RNNT models behind an asyncio WebSocket server that batches the
ready audio chunks of all connections into one model step. NeMo itself is imported lazily
through :func:`streamd.nemo_import.import_nemo_asr`, which applies the import-time shims first.
"""

__version__ = "0.1.0"
