"""``nv_one_logger.training_telemetry.api.config``."""

from __future__ import annotations

from typing import Any


class TrainingTelemetryConfig:
    """Accepts any telemetry fields and stores them; nothing is exported."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)
