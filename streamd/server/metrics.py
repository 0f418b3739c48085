"""Prometheus metrics: what an operator watches (docs/server.md, "Metrics").

One registry per server, fed by the session core (sessions, audio, update latency, backlog), the
admission checks (refusals) and the engine's cycles (step time, batch size, busy share), and read
at ``GET /metrics`` in the Prometheus text format (or on ``metrics_port``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

BUSY_WINDOW_S = 10.0  # the engine's busy share is over this many recent seconds
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The server's series; every method is cheap enough for the event loop's hot paths."""

    def __init__(self, backlog_seconds: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("streamd_sessions_active", "Sessions open now", ["protocol"], registry=r)
        self.sessions_ended = Counter("streamd_sessions_ended", "Sessions ended, by protocol and outcome "
                                      "(eof, client_gone, an error code, ...)", ["protocol", "outcome"], registry=r)
        self.audio_seconds = Counter("streamd_audio_seconds", "Audio received (at the model's rate), by the "
                                     "session's chunk size", ["chunk_ms"], registry=r)
        self.update_latency = Histogram(
            "streamd_update_latency_seconds", "From the arrival of the audio that completed an update's chunk to "
            "the update's first message going out, by chunk size", ["chunk_ms"], buckets=LATENCY_BUCKETS, registry=r)
        self.step_seconds = Histogram("streamd_step_seconds", "Duration of one engine step (all its model calls)",
                                      buckets=STEP_BUCKETS, registry=r)
        self.step_streams = Histogram("streamd_step_streams", "Streams one engine step ran (its batch)",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.refused = Counter("streamd_connections_refused", "Upgrades refused before the handshake, by reason "
                               "(full, loading, draining, failed, unauthorized, forbidden, too_many_sessions)",
                               ["reason"], registry=r)
        self.model = Info("streamd_model", "The model served: name, architecture, device, dtype", registry=r)
        busy = Gauge("streamd_engine_busy_ratio", f"Share of the last {BUSY_WINDOW_S:g} s the engine spent stepping",
                     registry=r)
        busy.set_function(self._busy_ratio)
        backlog = Gauge("streamd_backlog_seconds", "Audio received but not yet processed by the engine, summed over "
                        "sessions", registry=r)
        backlog.set_function(backlog_seconds)
        self._steps: deque[tuple[float, float]] = deque()  # (when it ended, its seconds), the last window's

    def observe_step(self, seconds: float, streams: int) -> None:
        self.step_seconds.observe(seconds)
        self.step_streams.observe(streams)
        self._steps.append((time.monotonic(), seconds))

    def _busy_ratio(self) -> float:
        since = time.monotonic() - BUSY_WINDOW_S
        while self._steps and self._steps[0][0] < since:
            self._steps.popleft()
        return min(1.0, sum(seconds for _, seconds in self._steps) / BUSY_WINDOW_S)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
