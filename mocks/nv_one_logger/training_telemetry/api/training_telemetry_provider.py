"""``nv_one_logger.training_telemetry.api.training_telemetry_provider``: a fluent no-op provider."""

from __future__ import annotations

from typing import Any


class _ProviderConfig:
    def __init__(self) -> None:
        self.base_config: Any = None
        self.telemetry_config: Any = None


class TrainingTelemetryProvider:
    """Singleton with the builder methods NeMo calls; every call only records its argument."""

    _instance: TrainingTelemetryProvider | None = None

    def __init__(self) -> None:
        self.config = _ProviderConfig()

    @classmethod
    def instance(cls) -> TrainingTelemetryProvider:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def with_base_config(self, config: Any) -> TrainingTelemetryProvider:
        self.config.base_config = config
        return self

    def with_export_config(self, *args: Any, **kwargs: Any) -> TrainingTelemetryProvider:
        return self

    def with_exporter(self, *args: Any, **kwargs: Any) -> TrainingTelemetryProvider:
        return self

    def configure_provider(self) -> TrainingTelemetryProvider:
        return self

    def set_training_telemetry_config(self, config: Any) -> None:
        self.config.telemetry_config = config
