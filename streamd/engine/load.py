"""The engine's load over a window of time: what the periodic ``engine load`` log event reports.

Operators read it to see how close a server runs to its limit (``busy``: the share of the window
the engine thread spent stepping) and where a step's time goes, under real traffic rather than
in a benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

from streamd.engine.engine import StepStats


@dataclass
class LoadWindow:
    """Step statistics summed since the window opened."""

    interval_s: float
    opened: float = field(default_factory=time.monotonic)
    steps: int = 0
    sums: StepStats = field(default_factory=StepStats)  # every field summed over the steps
    longest_s: float = 0.0

    def add(self, stats: StepStats) -> None:
        """Count one step."""
        self.steps += 1
        for name in (f.name for f in fields(StepStats)):
            setattr(self.sums, name, getattr(self.sums, name) + getattr(stats, name))
        self.longest_s = max(self.longest_s, stats.total_s)

    def due(self) -> bool:
        """Whether the window has lasted ``interval_s`` (0: never)."""
        return 0 < self.interval_s <= time.monotonic() - self.opened

    def summary(self) -> dict[str, Any]:
        """Means per step (ms) and ``busy``: the share of the window spent stepping."""
        seconds = time.monotonic() - self.opened
        sums, steps = self.sums, max(self.steps, 1)

        def ms(total_s: float) -> float:
            return round(1000 * total_s / steps, 1)

        return {
            "seconds": round(seconds, 1), "steps": self.steps, "busy": round(sums.total_s / seconds, 3),
            "streams_per_step": round(sums.streams / steps, 1), "step_ms": ms(sums.total_s),
            "longest_step_ms": round(self.longest_s * 1000, 1), "features_ms": ms(sums.features_s),
            "encoder_ms": ms(sums.encoder_s), "decoder_ms": ms(sums.decoder_s),
            "other_ms": ms(sums.total_s - sums.features_s - sums.encoder_s - sums.decoder_s),
        }
