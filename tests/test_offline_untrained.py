"""Untrained offline models of real architectures (``streamd model create-offline``), for the
offline benchmark on machines that cannot download weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import streamd_cli

from streamd import cli
from streamd.engine.loading import parameter_count
from streamd.offline import untrained

pytest_plugins = ["conftest_offline"]

SMALL_WHISPER = {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
                 "decoder_layers": 2, "decoder_attention_heads": 2, "decoder_ffn_dim": 128, "num_mel_bins": 128}


def meta_parameter_count(model_class: type, config: object) -> int:
    """Parameters of ``model_class(config)``, counted on the meta device (no memory, no time)."""
    with torch.device("meta"):
        return parameter_count(model_class(config))


def test_architectures_have_the_published_sizes(tiny_en_dir: Path):
    from transformers import Wav2Vec2ForCTC, WhisperForConditionalGeneration

    # Model cards: distil-whisper/distil-large-v3 756 M parameters (its vocabulary is 2 tokens
    # larger than tiny.en's English one); wav2vec2 large / MMS-300m with a CTC head 315 M.
    distil = untrained.whisper_config(tiny_en_dir, untrained.WHISPER_ARCHITECTURES["whisper-distil-large-v3"])
    assert meta_parameter_count(WhisperForConditionalGeneration, distil) == pytest.approx(756e6, rel=1e-3)
    assert distil.num_mel_bins == 128 and distil.vocab_size == 51864
    mms = untrained.aligner_config(untrained.ALIGNER_ARCHITECTURES["mms-300m-aligner"])
    assert meta_parameter_count(Wav2Vec2ForCTC, mms) == pytest.approx(315e6, rel=5e-3)


def test_untrained_whisper_keeps_the_tokenizer_follows_its_mel_bins_and_stops_generating(
        tiny_en_dir: Path, speech, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture):
    from transformers import WhisperProcessor

    monkeypatch.setitem(untrained.WHISPER_ARCHITECTURES, "whisper-small-test", SMALL_WHISPER)
    out = tmp_path / "whisper"
    assert cli.main(["model", "create-offline", "--arch", "whisper-small-test", "--like", str(tiny_en_dir),
                     "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"] > 0 and "UNTRAINED" in summary["warning"]

    built, like = WhisperProcessor.from_pretrained(out), WhisperProcessor.from_pretrained(tiny_en_dir)
    assert built.tokenizer(speech.text).input_ids == like.tokenizer(speech.text).input_ids
    assert built.feature_extractor.feature_size == 128 != like.feature_extractor.feature_size

    report = tmp_path / "offline.json"
    streamd_cli("bench", "offline", "--whisper", str(out), "--audio", str(speech.path), "--warmup", "0",
                "--runs", "1", "--out", str(report))
    [row] = json.loads(report.read_text())["results"]
    # An untrained decoder does not end on its own: without the cap it would run to 448 positions.
    assert 0 < row["generated_tokens"] <= untrained.GENERATED_TOKENS_MAX
    assert 0 < row["encoder_mean_s"] < row["generate_mean_s"]


@pytest.mark.parametrize(("args", "message"), [
    (["--arch", "whisper-distil-large-v3"], "needs --like WHISPER_DIR"),
    (["--arch", "mms-300m-aligner", "--like", "somewhere"], "--like is for Whisper architectures"),
    (["--arch", "whisper-distil-large-v3", "--like", "{tmp}"], "not a Whisper directory"),
])
def test_create_offline_refuses_what_it_cannot_build(args: list[str], message: str, tmp_path: Path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = streamd_cli("model", "create-offline", *args, "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "out").exists()
