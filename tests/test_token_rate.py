"""Token-rate calibration of untrained benchmark models (streamd.models.token_rate), end to end: the CLI
builds and calibrates a model, and the streaming engine, on audio the calibration never saw,
emits about the asked rate at every chunk size while the encoder stays the untrained one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import streamd_cli

TARGET_PER_S = 4.0
HELD_OUT_S = 30.0


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("token-rate") / "calibrated.nemo"
    proc = streamd_cli("model", "create", "--arch", "tiny", "--seed", "0",
                       "--tokens-per-second", str(TARGET_PER_S), "--out", str(out))
    return out, json.loads(proc.stdout.splitlines()[-1])


def streamed_tokens_per_second(model, size: tuple[int, int], audios: list[np.ndarray]) -> float:
    from streamd.engine.engine import StreamingEngine
    from streamd.engine.stream import StreamOptions
    from streamd.models import tones

    engine = StreamingEngine(model, max_batch=len(audios), max_streams=len(audios))
    tokens = 0
    for audio in audios:
        stream_id = engine.open_stream(StreamOptions(att_context_size=size, word_timestamps=False))
        engine.push_audio(stream_id, audio)
        engine.end_stream(stream_id)
    while engine.streams:
        for update in engine.step():
            tokens += sum(len(final.tokens) for final in update.finals)
    return tokens / (sum(len(a) for a in audios) / tones.SAMPLE_RATE)


def test_calibrated_model_streams_about_the_asked_token_rate_at_every_chunk_size(calibrated, untrained_tiny_path):
    from streamd.engine.loading import load_model
    from streamd.engine.offline import transcribe_offline
    from streamd.models import tones

    path, summary = calibrated
    sizes = summary["token_rate"]["sizes"]
    assert len(sizes) == 4
    for entry in sizes:  # the untrained model's own rate, measured by the calibration
        assert entry["untouched_per_s"] > 5 * TARGET_PER_S, entry
    model = load_model(str(path))
    rng = np.random.default_rng(1234)  # not the calibration's audio
    audios = [tones.random_audio(rng, 5.0) for _ in range(round(HELD_OUT_S / 5))]
    for size in [(70, 0), (70, 13)]:  # offline first: the saved weights hold no calibrated bias
        offline = sum(len(t.tokens) for t in transcribe_offline(model, audios, size)) / HELD_OUT_S
        assert TARGET_PER_S / 2 <= offline <= TARGET_PER_S * 2, (size, offline)
    for size in [(70, 0), (70, 13)]:
        rate = streamed_tokens_per_second(model, size, audios)
        assert TARGET_PER_S / 2 <= rate <= TARGET_PER_S * 2, (size, rate)
    untrained = load_model(str(untrained_tiny_path))
    for name, tensor in untrained.encoder.state_dict().items():
        assert torch.equal(tensor, model.encoder.state_dict()[name]), name


def test_token_rate_refuses_trained_models_and_nonpositive_rates(tmp_path):
    for args in (["--train", "tones", "--tokens-per-second", "4"], ["--tokens-per-second", "0"]):
        proc = streamd_cli("model", "create", "--arch", "tiny", *args, "--out", str(tmp_path / "m.nemo"),
                           check=False)
        assert proc.returncode == 2, proc.stderr
        assert "--tokens-per-second" in proc.stderr
        assert not (tmp_path / "m.nemo").exists()
