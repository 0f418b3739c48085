"""``nv_one_logger.training_telemetry.integration.pytorch_lightning``: a Lightning callback doing nothing.

NeMo subclasses it together with its own ``BaseCallback``, so it must be a real Lightning
``Callback`` for Lightning to accept it on a trainer.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback


class TimeEventCallback(Callback):
    """Accepts the provider and options of the real callback and records no events."""

    def __init__(self, provider: Any = None, call_on_app_start: bool = True, **kwargs: Any) -> None:
        super().__init__()
        self.provider = provider
