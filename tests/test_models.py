"""Model creation and loading (untrained models: shapes and plumbing only)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from streamd.engine.loading import ModelLoadError, is_untrained, load_model, parameter_count
from streamd.models.architectures import build_model
from tests.conftest import streamd_cli


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = build_model("tiny", seed=3), build_model("tiny", seed=3), build_model("tiny", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert is_untrained(a)


def test_cli_untrained_tiny_says_untrained_and_loads(tmp_path):
    out = tmp_path / "tiny.nemo"
    proc = streamd_cli("model", "create", "--arch", "tiny", "--out", str(out))
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "UNTRAINED" in summary["warning"] and "UNTRAINED" in proc.stderr
    model = load_model(str(out))
    assert parameter_count(model) == summary["parameters"]
    assert [list(s) for s in model.encoder.att_context_size_all] == [[70, 13], [70, 6], [70, 1], [70, 0]]


def test_nemotron_architecture_matches_the_published_model():
    model = build_model("nemotron-0.6b")
    count = parameter_count(model)
    assert 600e6 < count < 640e6, count  # published: ~618M
    enc, cfg = model.encoder, model.cfg
    assert (len(enc.layers), enc.d_model, enc.subsampling_factor) == (24, 1024, 8)
    assert cfg.preprocessor.features == 128 and cfg.preprocessor.n_fft == 512
    assert cfg.preprocessor.normalize == "NA"
    assert cfg.encoder.conv_kernel_size == 9 and cfg.encoder.subsampling_conv_channels == 256
    assert cfg.encoder.use_bias is False and cfg.encoder.causal_downsampling is True
    assert model.tokenizer.vocab_size == 1024
    assert model.joint.num_classes_with_blank == 1025
    del model


def test_micro_architecture_is_next_to_no_compute_and_streams_at_every_chunk_size(rng):
    """The overhead benchmarks' model: far smaller than tiny, and still a cache-aware model that the
    engine streams to a final at each chunk size."""
    from streamd.engine.engine import StreamingEngine
    from streamd.engine.stream import StreamOptions
    from streamd.models import tones
    from streamd.transcribe import transcribe_streaming

    micro = build_model("micro")
    assert parameter_count(micro) * 20 < parameter_count(build_model("tiny"))
    assert [tuple(s) for s in micro.encoder.att_context_size_all] == [(70, 13), (70, 6), (70, 1), (70, 0)]
    audio = tones.random_audio(rng, 2.0)
    for size in micro.encoder.att_context_size_all:
        engine = StreamingEngine(micro, max_streams=2)
        done = transcribe_streaming(engine, [audio, audio[:8000]], StreamOptions(att_context_size=tuple(size)))
        assert len(done) == 2 and not engine.streams


def test_pretrained_name_offline_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("STREAMD_HUB_HOST", "127.0.0.1")  # nothing listens on 443 here
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="unreachable"):
        load_model("nvidia/nemotron-speech-streaming-en-0.6b")
    assert time.monotonic() - started < 30


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "nope.nemo"))
