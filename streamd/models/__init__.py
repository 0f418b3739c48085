"""Making models: architectures, the tone alphabet, training, token-rate calibration.

This package stands above the engine: it may import :mod:`streamd.engine` (loading, decoding
set-up), never the other way round. Loading a model for inference is
:mod:`streamd.engine.loading`.
"""
