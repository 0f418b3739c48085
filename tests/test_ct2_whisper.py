"""CTranslate2 model.bin reader on synthetic files, and the tiny.en conversion it feeds."""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from streamd.commands.convert import run_ct2_whisper
from streamd.offline.ct2_whisper import Ct2FormatError, read_model_bin

pytest_plugins = ["conftest_offline"]

TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}


def _string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def write_model_bin(path: Path, variables: dict[str, tuple[str, np.ndarray]], aliases: dict[str, str],
                    version: int = 6) -> None:
    """A model.bin as CTranslate2's ModelSpec._serialize lays it out (the test's own writer)."""
    blob = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<I", 1)
    blob += struct.pack("<I", len(variables))
    for name, (type_name, array) in variables.items():
        raw = array.tobytes()
        dims = b"".join(struct.pack("<I", d) for d in array.shape)
        blob += _string(name) + struct.pack("<B", array.ndim) + dims
        blob += struct.pack("<B", TYPE_IDS[type_name]) + struct.pack("<I", len(raw)) + raw
    blob += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        blob += _string(alias) + _string(target)
    path.write_bytes(blob)


def test_read_model_bin_dequantizes_and_resolves_aliases(tmp_path: Path) -> None:
    bf16_bits = torch.tensor([1.5, -2.25, 0.0078125]).to(torch.bfloat16).view(torch.int16).numpy()
    write_model_bin(tmp_path / "model.bin", {
        "a/weight": ("float16", np.array([[1.0, -0.5], [2.0, 0.25]], dtype=np.float16)),
        # int8 weight with one scale per row: float = q / scale
        "b/weight": ("int8", np.array([[127, -64], [10, 20]], dtype=np.int8)),
        "b/weight_scale": ("float32", np.array([127.0, 10.0], dtype=np.float32)),
        # int16 weight with one scale for the tensor
        "c/weight": ("int16", np.array([1024, -512], dtype=np.int16)),
        "c/weight_scale": ("float32", np.array(1024.0, dtype=np.float32)),
        "d/bias": ("bfloat16", bf16_bits),
        "num_heads": ("int16", np.array(6, dtype=np.int16)),
    }, aliases={"e/weight": "b/weight"})

    model = read_model_bin(tmp_path / "model.bin")

    assert (model.spec, model.revision, model.binary_version) == ("TestSpec", 1, 6)
    values = model.variables
    np.testing.assert_array_equal(values["a/weight"], [[1.0, -0.5], [2.0, 0.25]])
    np.testing.assert_allclose(values["b/weight"], [[1.0, -64 / 127], [1.0, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(values["c/weight"], [1.0, -0.5])
    np.testing.assert_array_equal(values["d/bias"], [1.5, -2.25, 0.0078125])
    np.testing.assert_array_equal(values["e/weight"], values["b/weight"])
    assert "b/weight_scale" not in values
    assert model.scalar("num_heads") == 6
    assert all(v.dtype == np.float32 for k, v in values.items() if k != "num_heads")


def test_read_model_bin_rejects_truncated_and_future_files(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    write_model_bin(path, {"w": ("float32", np.ones((4, 4), dtype=np.float32))}, aliases={})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(Ct2FormatError, match="truncated"):
        read_model_bin(path)
    write_model_bin(path, {}, aliases={}, version=99)
    with pytest.raises(Ct2FormatError, match="binary version 99"):
        read_model_bin(path)


def test_convert_refuses_a_directory_without_model_bin(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = argparse.Namespace(src=str(tmp_path), out=str(tmp_path / "out"))
    assert run_ct2_whisper(args) == 2
    assert "model.bin is missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_converted_tiny_en_has_whisper_tiny_en_shapes_and_generation_settings(
    tiny_en_dir: Path, ct2_tiny_en_dir: Path
) -> None:
    config = json.loads((tiny_en_dir / "config.json").read_text())
    # Published tiny.en dimensions (OpenAI model card): 4+4 layers, 6 heads, d_model 384, 80 mels.
    expected = {"d_model": 384, "encoder_layers": 4, "decoder_layers": 4, "encoder_attention_heads": 6,
                "decoder_attention_heads": 6, "encoder_ffn_dim": 1536, "num_mel_bins": 80,
                "vocab_size": 51864,
                "max_source_positions": 1500, "max_target_positions": 448, "decoder_start_token_id": 50257,
                "eos_token_id": 50256}
    assert {key: config[key] for key in expected} == expected
    generation = json.loads((tiny_en_dir / "generation_config.json").read_text())
    ct2_config = json.loads((ct2_tiny_en_dir / "config.json").read_text())
    assert generation["is_multilingual"] is False
    assert generation["no_timestamps_token_id"] == 50362
    assert generation["alignment_heads"] == ct2_config["alignment_heads"]
    assert generation["suppress_tokens"] == ct2_config["suppress_ids"]
    assert generation["begin_suppress_tokens"] == [220, 50256]
    assert (tiny_en_dir / "model.safetensors").is_file()
    assert (tiny_en_dir / "preprocessor_config.json").is_file()

    from transformers import WhisperProcessor

    processor = WhisperProcessor.from_pretrained(tiny_en_dir)
    assert len(processor.tokenizer) == 51864
    assert processor.tokenizer.convert_ids_to_tokens([50363, 51863]) == ["<|0.00|>", "<|30.00|>"]
    assert processor.feature_extractor.feature_size == 80
