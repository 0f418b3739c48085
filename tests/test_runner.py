"""EngineRunner (the event loop's side of the engine's worker) with the real tone model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamd.models import tones


def test_a_stream_opened_after_the_device_failed_is_refused_at_once(tone_model, rng, monkeypatch):
    """A session whose open() reached the worker just after the failing step would otherwise hold
    a stream that never steps (the runner steps no more) until the server's shutdown timeout."""
    import streamd.engine.engine as engine_module
    from streamd.engine.engine import StreamingEngine
    from streamd.engine.runner import EngineFailure, EngineRunner
    from streamd.engine.stream import StreamOptions

    error = "CUDA error: an illegal memory access was encountered (injected)"

    def run_group_failing(*args):
        raise RuntimeError(error)

    async def scenario() -> None:
        runner = EngineRunner()
        failed = asyncio.Event()
        await runner.start(lambda: StreamingEngine(tone_model, max_batch=4, max_streams=4),
                           on_device_failure=lambda reason: failed.set())
        # The device goes (after the warm-up): every model call fails and the device check says so.
        monkeypatch.setattr(StreamingEngine, "_run_group", run_group_failing)
        monkeypatch.setattr(engine_module, "device_fault", lambda device: f"AcceleratorError: {error}")
        first: asyncio.Queue = asyncio.Queue()
        stream_id = await runner.open(StreamOptions(att_context_size=(70, 1)), first)
        runner.push(stream_id, tones.synthesize("abc", rng).audio)
        assert isinstance(await asyncio.wait_for(first.get(), 30), EngineFailure)
        await asyncio.wait_for(failed.wait(), 30)
        with pytest.raises(EngineFailure, match=r"the device failed: .*illegal memory access"):
            await asyncio.wait_for(runner.open(StreamOptions(att_context_size=(70, 1)), asyncio.Queue()), 30)
        await runner.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("window_s", [0.0, 0.2])
def test_a_batch_window_lets_audio_arriving_together_share_a_step(tone_model, rng, window_s):
    """Two streams' first chunks arrive 30 ms apart at an idle engine: at once, the first steps
    alone; with a 200 ms window, both share the first step (one Delivery per stream from it)."""
    from streamd.engine.engine import StreamingEngine
    from streamd.engine.runner import EngineRunner
    from streamd.engine.stream import StreamOptions

    async def first_steps() -> tuple[float, float]:
        runner = EngineRunner()
        await runner.start(lambda: StreamingEngine(tone_model, max_batch=4, max_streams=4), batch_window_s=window_s)
        sinks: list[asyncio.Queue] = [asyncio.Queue(), asyncio.Queue()]
        ids = [await runner.open(StreamOptions(att_context_size=(70, 1)), sink) for sink in sinks]
        for stream_id in ids:
            runner.push(stream_id, tones.synthesize("ab", rng).audio[:8000])  # 0.5 s: first chunks
            await asyncio.sleep(0.03)
        firsts = [await asyncio.wait_for(sink.get(), 30) for sink in sinks]
        await runner.stop()
        return firsts[0].step_seconds, firsts[1].step_seconds

    a, b = asyncio.run(first_steps())
    assert (a == b) == (window_s > 0), (a, b)


def test_the_objects_alive_after_the_warm_up_are_left_out_of_garbage_collection(tone_model):
    """A full collection over the model's and NeMo's objects held the GIL for ~340 ms (event loop
    and engine stalled together); once started, they are frozen and a collection sees only
    objects made since."""
    import gc

    from streamd.engine.engine import StreamingEngine
    from streamd.engine.runner import EngineRunner

    async def start_and_count() -> tuple[int, int]:
        runner = EngineRunner()
        await runner.start(lambda: StreamingEngine(tone_model, max_batch=4, max_streams=4))
        counts = gc.get_freeze_count(), len(gc.get_objects())
        await runner.stop()
        return counts

    gc.unfreeze()
    try:
        frozen, collectable = asyncio.run(start_and_count())
    finally:
        gc.unfreeze()
    assert frozen > 10 * collectable, (frozen, collectable)


def test_commands_a_session_sends_after_its_stream_failed_are_dropped_quietly(tone_model, rng, monkeypatch):
    """A session sends on until it has read its failure; the engine would log each later command
    as another failure (a command for no open stream)."""
    from structlog.testing import capture_logs

    from streamd.engine.engine import StreamingEngine
    from streamd.engine.runner import EngineFailure, EngineRunner
    from streamd.engine.stream import StreamOptions

    push_audio = StreamingEngine.push_audio

    def push_audio_or_fail(self, stream_id, samples):
        if (samples == -1.0).any():
            raise RuntimeError("injected engine fault")
        push_audio(self, stream_id, samples)

    monkeypatch.setattr(StreamingEngine, "push_audio", push_audio_or_fail)
    audio = tones.synthesize("abc", rng).audio

    async def scenario() -> None:
        runner = EngineRunner()
        await runner.start(lambda: StreamingEngine(tone_model, max_batch=4, max_streams=4))
        failing: asyncio.Queue = asyncio.Queue()
        stream_id = await runner.open(StreamOptions(att_context_size=(70, 1)), failing)
        runner.push(stream_id, np.full(1280, -1.0, np.float32))
        assert isinstance(await asyncio.wait_for(failing.get(), 30), EngineFailure)
        runner.push(stream_id, audio)  # sent before the session read its failure
        runner.end(stream_id)
        other: asyncio.Queue = asyncio.Queue()  # a healthy stream keeps the engine cycling to its end
        other_id = await runner.open(StreamOptions(att_context_size=(70, 1)), other)
        runner.push(other_id, audio)
        runner.end(other_id)
        while not (delivery := await asyncio.wait_for(other.get(), 30)).update.finished:
            pass
        assert delivery.update.finals[-1].text == "a b c"
        await runner.stop()

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert [entry["event"] for entry in logs].count("engine command failed") == 1
