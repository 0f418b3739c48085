"""Convert a CTranslate2 Whisper model directory into a transformers Whisper directory.

CTranslate2 is deliberately not a dependency: :func:`read_model_bin` parses its ``model.bin``
format directly (layout of ``ModelSpec._serialize`` in ``python/ctranslate2/specs/model_spec.py``
and ``Model::load`` in ``src/models/model.cc``). All integers are little-endian:

* ``u32`` binary version, then (version >= 2) ``string`` spec name and ``u32`` spec revision,
  where ``string`` is a ``u16`` length (including a trailing NUL) followed by the bytes;
* ``u32`` variable count, then per variable: ``string`` name, ``u8`` rank, ``rank x u32`` dims,
  ``u8`` dtype id (float32, int8, int16, int32, float16, bfloat16) and ``u32`` byte count
  (version >= 4; older files store the item size and an element count), then the raw data;
* (version >= 3) ``u32`` alias count, then ``string`` alias / ``string`` target pairs.

Quantized weights (int8 per output row, int16 per tensor) carry a ``<name>_scale`` variable; the
float value is ``quantized / scale``. The Whisper spec fuses self-attention q/k/v into one linear
(Whisper's key projection has no bias, so its slice of the fused bias must be zero) and
cross-attention k/v into another, and ties the output projection to the token embeddings.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from streamd.log import get_logger

log = get_logger(__name__)

MAX_BINARY_VERSION = 6
WHISPER_SPEC = "WhisperSpec"
# OpenAI's rule: multilingual checkpoints have 51865 or more tokens, English-only ones 51864.
MULTILINGUAL_MIN_VOCAB = 51865
# Type ids in the order of the DataType enum (include/ctranslate2/types.h).
_TYPE_IDS = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_NUMPY_TYPES = {"float32": np.float32, "int8": np.int8, "int16": np.int16, "int32": np.int32,
                "float16": np.float16, "bfloat16": np.uint16}
_ITEM_SIZE_TYPES = {4: "float32", 2: "int16", 1: "int8"}


class Ct2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands."""


@dataclass(frozen=True)
class Ct2Model:
    """The parsed content of a ``model.bin``: float32 tensors with aliases resolved."""

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray]

    def scalar(self, name: str) -> int:
        """An integer attribute stored as a 0-d variable (e.g. ``encoder/num_heads``)."""
        return int(self.variables[name])


def _read(stream: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    data = stream.read(size)
    if len(data) != size:
        raise Ct2FormatError(f"model.bin is truncated at byte {stream.tell()}")
    return struct.unpack(fmt, data)[0]


def _read_string(stream: BinaryIO) -> str:
    length = _read(stream, "<H")
    return stream.read(length).rstrip(b"\0").decode("utf-8")


def _read_variable(stream: BinaryIO, binary_version: int) -> tuple[str, np.ndarray]:
    name = _read_string(stream)
    rank = _read(stream, "<B")
    shape = tuple(_read(stream, "<I") for _ in range(rank))
    if binary_version >= 4:
        type_id = _read(stream, "<B")
        if type_id >= len(_TYPE_IDS):
            raise Ct2FormatError(f"variable {name!r} has unknown dtype id {type_id}")
        type_name = _TYPE_IDS[type_id]
        num_bytes = _read(stream, "<I")
    else:
        item_size = _read(stream, "<B")
        if item_size not in _ITEM_SIZE_TYPES:
            raise Ct2FormatError(f"variable {name!r} has unknown item size {item_size}")
        type_name = _ITEM_SIZE_TYPES[item_size]
        num_bytes = _read(stream, "<I") * item_size
    data = stream.read(num_bytes)
    if len(data) != num_bytes:
        raise Ct2FormatError(f"model.bin is truncated inside variable {name!r}")
    array = np.frombuffer(data, dtype=_NUMPY_TYPES[type_name]).reshape(shape)
    if type_name == "bfloat16":  # numpy has no bfloat16: widen the raw bits through torch
        array = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    return name, array


def _dequantize(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float32 copies of all non-scalar variables; int weights divided by their ``_scale``."""
    out: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        if name.endswith("_scale"):
            continue
        scale = raw.get(f"{name}_scale")
        if scale is not None:
            # int8 scales are per output row, int16 ones a single number
            scale = scale.astype(np.float32).reshape(-1, *[1] * (value.ndim - 1)) if scale.ndim else scale
            value = value.astype(np.float32) / scale
        out[name] = value if value.ndim == 0 else value.astype(np.float32)
    return out


def read_model_bin(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary versions 1 to 6) into float32 numpy arrays."""
    with open(path, "rb") as stream:
        version = _read(stream, "<I")
        if not 1 <= version <= MAX_BINARY_VERSION:
            raise Ct2FormatError(f"{path}: unsupported CTranslate2 binary version {version}")
        spec, revision = (_read_string(stream), _read(stream, "<I")) if version >= 2 else ("", 1)
        raw = dict(_read_variable(stream, version) for _ in range(_read(stream, "<I")))
        if version >= 3:
            for _ in range(_read(stream, "<I")):
                alias, target = _read_string(stream), _read_string(stream)
                raw[alias] = raw[target]
                if f"{target}_scale" in raw:
                    raw[f"{alias}_scale"] = raw[f"{target}_scale"]
    return Ct2Model(spec=spec, revision=revision, binary_version=version, variables=_dequantize(raw))


def _count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(rf"{prefix}/layer_(\d+)/")
    return len({match.group(1) for name in variables if (match := pattern.match(name))})


def _linear(state: dict[str, np.ndarray], hf: str, ct2: dict[str, np.ndarray], ct2_name: str) -> None:
    state[f"{hf}.weight"] = ct2[f"{ct2_name}/weight"]
    if f"{ct2_name}/bias" in ct2:
        state[f"{hf}.bias"] = ct2[f"{ct2_name}/bias"]


def _layer_norm(state: dict[str, np.ndarray], hf: str, ct2: dict[str, np.ndarray], ct2_name: str) -> None:
    state[f"{hf}.weight"] = ct2[f"{ct2_name}/gamma"]
    state[f"{hf}.bias"] = ct2[f"{ct2_name}/beta"]


def _fused_projections(
    state: dict[str, np.ndarray], hf: str, ct2: dict[str, np.ndarray], ct2_name: str, names: tuple[str, ...]
) -> None:
    """Split a fused CT2 linear into HF projections; Whisper's ``k_proj`` has no bias."""
    weights = np.split(ct2[f"{ct2_name}/weight"], len(names))
    biases = np.split(ct2[f"{ct2_name}/bias"], len(names))
    for proj, weight, bias in zip(names, weights, biases, strict=True):
        state[f"{hf}.{proj}.weight"] = weight
        if proj == "k_proj":
            if np.any(bias != 0):
                raise Ct2FormatError(f"{ct2_name}: non-zero key bias, which Whisper cannot represent")
        else:
            state[f"{hf}.{proj}.bias"] = bias


def _layer_state(ct2: dict[str, np.ndarray], side: str, index: int) -> dict[str, np.ndarray]:
    """HF weights of one encoder (``side='encoder'``) or decoder layer."""
    src, dst, state = f"{side}/layer_{index}", f"model.{side}.layers.{index}", {}
    _fused_projections(state, f"{dst}.self_attn", ct2, f"{src}/self_attention/linear_0",
                       ("q_proj", "k_proj", "v_proj"))
    _linear(state, f"{dst}.self_attn.out_proj", ct2, f"{src}/self_attention/linear_1")
    _layer_norm(state, f"{dst}.self_attn_layer_norm", ct2, f"{src}/self_attention/layer_norm")
    if side == "decoder":
        _linear(state, f"{dst}.encoder_attn.q_proj", ct2, f"{src}/attention/linear_0")
        _fused_projections(state, f"{dst}.encoder_attn", ct2, f"{src}/attention/linear_1",
                           ("k_proj", "v_proj"))
        _linear(state, f"{dst}.encoder_attn.out_proj", ct2, f"{src}/attention/linear_2")
        _layer_norm(state, f"{dst}.encoder_attn_layer_norm", ct2, f"{src}/attention/layer_norm")
    _linear(state, f"{dst}.fc1", ct2, f"{src}/ffn/linear_0")
    _linear(state, f"{dst}.fc2", ct2, f"{src}/ffn/linear_1")
    _layer_norm(state, f"{dst}.final_layer_norm", ct2, f"{src}/ffn/layer_norm")
    return state


def whisper_state_dict(model: Ct2Model) -> dict[str, torch.Tensor]:
    """Map CT2 Whisper variables to ``WhisperForConditionalGeneration`` parameter names."""
    ct2 = model.variables
    state: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(state, f"model.encoder.{conv}", ct2, f"encoder/{conv}")
    for side in ("encoder", "decoder"):
        state[f"model.{side}.embed_positions.weight"] = ct2[f"{side}/position_encodings/encodings"]
        _layer_norm(state, f"model.{side}.layer_norm", ct2, f"{side}/layer_norm")
        for index in range(_count_layers(ct2, side)):
            state.update(_layer_state(ct2, side, index))
    embeddings = ct2["decoder/embeddings/weight"]
    if not np.array_equal(ct2.get("decoder/projection/weight", embeddings), embeddings):
        raise Ct2FormatError("decoder projection differs from the token embeddings; HF Whisper ties them")
    state["model.decoder.embed_tokens.weight"] = state["proj_out.weight"] = embeddings
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state.items()}


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of Whisper's control tokens, looked up by name in the tokenizer."""

    eot: int
    sot: int
    translate: int
    transcribe: int
    prev: int
    no_timestamps: int
    languages: dict[str, int]

    @classmethod
    def from_tokenizer_json(cls, tokenizer_json: dict) -> SpecialTokens:
        ids = {token["content"]: token["id"] for token in tokenizer_json["added_tokens"]}
        sot, translate = ids["<|startoftranscript|>"], ids["<|translate|>"]
        # Language tokens sit between <|startoftranscript|> and <|translate|> (both vocab layouts).
        languages = {content: i for content, i in ids.items() if sot < i < translate}
        return cls(eot=ids["<|endoftext|>"], sot=sot, translate=translate, transcribe=ids["<|transcribe|>"],
                   prev=ids["<|startofprev|>"], no_timestamps=ids["<|notimestamps|>"], languages=languages)


def whisper_config(model: Ct2Model, special: SpecialTokens):
    """A ``WhisperConfig`` whose shapes come from the weights and token ids from the tokenizer.

    Generation settings (suppressed tokens, prompt tokens) go to the generation config only:
    transformers deprecates them in the model config.
    """
    from transformers import WhisperConfig

    ct2 = model.variables
    vocab_size, d_model = ct2["decoder/embeddings/weight"].shape
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=ct2["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_count_layers(ct2, "encoder"),
        decoder_layers=_count_layers(ct2, "decoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=special.eot,
        bos_token_id=special.eot,
        eos_token_id=special.eot,
        decoder_start_token_id=special.sot,
        begin_suppress_tokens=None,  # WhisperConfig has a default; the generation config holds the real list
        architectures=["WhisperForConditionalGeneration"],
    )


def whisper_generation_config(config, special: SpecialTokens, ct2_config: dict):
    """The generation settings HF Whisper ``generate`` reads (prompt tokens, suppression, heads)."""
    from transformers import GenerationConfig

    multilingual = config.vocab_size >= MULTILINGUAL_MIN_VOCAB
    extra = (
        {"lang_to_id": special.languages,
         "task_to_id": {"transcribe": special.transcribe, "translate": special.translate}}
        if multilingual else {}
    )
    return GenerationConfig(
        decoder_start_token_id=special.sot,
        bos_token_id=special.eot,
        eos_token_id=special.eot,
        pad_token_id=special.eot,
        max_length=config.max_target_positions,
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        no_timestamps_token_id=special.no_timestamps,
        prev_sot_token_id=special.prev,
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=multilingual,
        alignment_heads=[list(head) for head in ct2_config.get("alignment_heads", [])],
        **extra,
    )


def _timestamp_tokens(vocabulary_file: Path, tokenizer_size: int) -> list[str]:
    """Vocabulary entries past the HF tokenizer's end (``<|0.00|>`` ... ``<|30.00|>``)."""
    if not vocabulary_file.exists():
        return []
    entries = vocabulary_file.read_text(encoding="utf-8").splitlines()
    return entries[tokenizer_size:]


def _write_processor(src: Path, out: Path, config) -> None:
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer
    from transformers.tokenization_utils_base import AddedToken

    shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer",
        "unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "model_max_length": config.max_target_positions,
    }))
    tokenizer = WhisperTokenizer.from_pretrained(out)
    timestamps = _timestamp_tokens(src / "vocabulary.txt", len(tokenizer))
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in timestamps])
    if len(tokenizer) != config.vocab_size:
        log.warning("tokenizer size differs from the model vocabulary", tokenizer=len(tokenizer),
                    model=config.vocab_size)
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    extractor.save_pretrained(out)  # preprocessor_config.json, for loaders that want the extractor alone


def convert_ct2_whisper(src_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a float32 transformers Whisper directory (weights, configs, processor) from CT2 files."""
    from transformers import WhisperForConditionalGeneration

    src, out = Path(src_dir), Path(out_dir)
    for required in ("model.bin", "config.json", "tokenizer.json"):
        if not (src / required).is_file():
            raise FileNotFoundError(f"{src / required} is missing: not a CTranslate2 Whisper directory")
    model_bin = read_model_bin(src / "model.bin")
    if model_bin.spec != WHISPER_SPEC:
        raise Ct2FormatError(f"{src / 'model.bin'} holds a {model_bin.spec or 'pre-v2'} model, "
                             f"not {WHISPER_SPEC}")
    ct2_config = json.loads((src / "config.json").read_text())
    tokenizer_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    special = SpecialTokens.from_tokenizer_json(tokenizer_json)

    config = whisper_config(model_bin, special)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(whisper_state_dict(model_bin), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = whisper_generation_config(config, special, ct2_config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _write_processor(src, out, config)
    log.info("converted CTranslate2 Whisper", src=str(src), out=str(out),
             binary_version=model_bin.binary_version, vocab=config.vocab_size,
             layers=(config.encoder_layers, config.decoder_layers))
    return out
