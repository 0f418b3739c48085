"""The engine's load over a window of time: what the periodic ``engine load`` log event reports.

Operators read it to see how close a server runs to its limit (``busy``: the share of the window
the engine thread spent stepping) and where a step's time goes, under real traffic rather than
in a benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from streamd.engine.engine import StepStats


@dataclass
class LoadWindow:
    """Step statistics summed since the window opened."""

    interval_s: float
    opened: float = field(default_factory=time.monotonic)
    steps: int = 0
    streams: int = 0
    features_s: float = 0.0
    encoder_s: float = 0.0
    decoder_s: float = 0.0
    total_s: float = 0.0
    longest_s: float = 0.0

    def add(self, stats: StepStats) -> None:
        """Count one step."""
        self.steps += 1
        self.streams += stats.streams
        self.features_s += stats.features_s
        self.encoder_s += stats.encoder_s
        self.decoder_s += stats.decoder_s
        self.total_s += stats.total_s
        self.longest_s = max(self.longest_s, stats.total_s)

    def due(self) -> bool:
        """Whether the window has lasted ``interval_s`` (0: never)."""
        return 0 < self.interval_s <= time.monotonic() - self.opened

    def summary(self) -> dict[str, Any]:
        """Means per step (ms) and ``busy``: the share of the window spent stepping."""
        seconds = time.monotonic() - self.opened
        per_step_ms = 1000 / max(self.steps, 1)
        return {
            "seconds": round(seconds, 1), "steps": self.steps, "busy": round(self.total_s / seconds, 3),
            "streams_per_step": round(self.streams / max(self.steps, 1), 1),
            "step_ms": round(self.total_s * per_step_ms, 1), "longest_step_ms": round(self.longest_s * 1000, 1),
            "features_ms": round(self.features_s * per_step_ms, 1),
            "encoder_ms": round(self.encoder_s * per_step_ms, 1),
            "decoder_ms": round(self.decoder_s * per_step_ms, 1),
            "other_ms": round((self.total_s - self.features_s - self.encoder_s - self.decoder_s) * per_step_ms, 1),
        }
