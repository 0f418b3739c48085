"""``/metrics``: a real server scraped under load, its exposition parsed with prometheus_client's own
parser, every series checked against what the test did (sessions, audio seconds, refusals)."""

from __future__ import annotations

import asyncio
import http.client
import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_server import letters_sequence, stream, tone_pcm
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamd.serverproc import ServerProcess, free_port, start_server

TOKEN = "metrics-token"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, token: str | None = TOKEN) -> tuple[int, str, Samples]:
    """``GET /metrics``: status, content type, and every sample by (name, sorted labels)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        text = response.read().decode()
    finally:
        connection.close()
    if response.status != 200:
        return response.status, response.getheader("Content-Type", ""), {}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return response.status, response.getheader("Content-Type", ""), samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def server(tone_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("metrics")
    (folder / "tokens").write_text(TOKEN + "\n")
    started = start_server(tone_model_path, folder / "server.log", threads=1, auth_tokens_file=folder / "tokens",
                           max_sessions_per_ip=0, metrics_port=free_port())
    yield started
    assert started.stop() == 0, started.log_tail()


def metrics_port(server: ServerProcess) -> int:
    for line in server.log_path.read_text().splitlines():
        if '"listener": "metrics"' in line:
            return json.loads(line)["port"]
    raise AssertionError("no metrics listener in the log")


def test_metrics_under_load_say_what_happened(server: ServerProcess, tone_model_path: Path, rng: np.random.Generator):
    status, content_type, _ = scrape(server.port, token=None)
    assert status == 401  # behind the sessions' tokens
    status, content_type, before = scrape(server.port)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    said = letters_sequence(rng, 6, (4, 6))
    chunks = [160, 160, 160, 1120, 1120, 1120]
    url = server.url + f"?token={TOKEN}"

    async def load() -> Samples:
        sessions = [asyncio.create_task(stream(url, tone_pcm(s), chunk, speed=2.0)) for s, chunk in zip(said, chunks)]
        await asyncio.sleep(1.0)
        _, _, during = await asyncio.to_thread(scrape, server.port)
        for session in sessions:
            assert (await session).text  # every session heard something
        return during

    during = asyncio.run(load())
    assert value(during, "streamd_sessions_active", protocol="native") >= 1
    assert 0 < value(during, "streamd_engine_busy_ratio") <= 1
    assert value(during, "streamd_backlog_seconds") >= 0

    async def refused() -> None:
        with pytest.raises(InvalidStatus):
            async with connect(server.url):  # no token
                pass

    asyncio.run(refused())
    server.wait_idle()
    _, _, after = scrape(server.port)
    assert value(after, "streamd_sessions_active", protocol="native") == 0
    ended = value(after, "streamd_sessions_ended_total", protocol="native", outcome="eof") - \
        value(before, "streamd_sessions_ended_total", protocol="native", outcome="eof")
    assert ended == len(said)
    for chunk in (160, 1120):
        sent = sum(len(s.audio) / 16000 for s, c in zip(said, chunks) if c == chunk)
        counted = value(after, "streamd_audio_seconds_total", chunk_ms=str(chunk)) - \
            value(before, "streamd_audio_seconds_total", chunk_ms=str(chunk))
        assert counted == pytest.approx(sent, rel=0.01)
        updates = value(after, "streamd_update_latency_seconds_count", chunk_ms=str(chunk))
        assert updates >= 3  # every session had partials and a final
        assert 0 < value(after, "streamd_update_latency_seconds_sum", chunk_ms=str(chunk)) / updates < 5
    steps = value(after, "streamd_step_seconds_count")
    assert steps > 0 and value(after, "streamd_step_streams_count") == steps
    assert value(after, "streamd_step_streams_sum") >= steps  # at least one stream a step
    assert value(after, "streamd_connections_refused_total", reason="unauthorized") >= 2  # the upgrade, the scrape
    info = [labels for (name, labels) in after if name == "streamd_model_info"]
    assert [dict(labels) for labels in info] == [{"name": tone_model_path.stem, "architecture": "tiny",
                                                   "device": "cpu", "dtype": "float32"}]


def test_metrics_port_serves_the_same_series_without_a_token(server: ServerProcess):
    status, _, samples = scrape(metrics_port(server), token=None)
    assert status == 200 and any(name == "streamd_sessions_ended_total" for name, _ in samples)
