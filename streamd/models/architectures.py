"""Architectures: untrained cache-aware FastConformer-RNNT models of a named size.

:func:`build_model` builds an UNTRAINED cache-aware FastConformer-RNNT of a named architecture.
Untrained weights produce meaningless text (an untrained RNNT typically emits the maximum number
of symbols on every frame, so its tokens flip on any rounding difference): such models exist for
shape, memory and speed measurements. For a model that really recognizes something, see
:mod:`streamd.models.training` (the tone alphabet).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from streamd.log import get_logger
from streamd.nemo_import import import_nemo_asr

log = get_logger(__name__)

# The four chunk sizes of nemotron-speech-streaming: [70, R] -> (R + 1) x 80 ms.
ATT_CONTEXT_SIZES: tuple[tuple[int, int], ...] = ((70, 13), (70, 6), (70, 1), (70, 0))


@dataclass(frozen=True)
class Architecture:
    """The sizes that distinguish one FastConformer-RNNT architecture from another."""

    n_layers: int
    d_model: int
    n_heads: int
    subsampling_conv_channels: int
    pred_hidden: int
    pred_rnn_layers: int
    joint_hidden: int
    vocab_size: int
    n_mels: int = 128
    dropout: float = 0.1  # encoder; the prediction and joint networks use twice this (published layout)
    spec_augment: bool = False  # SpecAugment's frequency and time masks on the features while training


ARCHITECTURES: dict[str, Architecture] = {
    # nvidia/nemotron-speech-streaming-en-0.6b as published (~618M parameters).
    "nemotron-0.6b": Architecture(
        n_layers=24, d_model=1024, n_heads=8, subsampling_conv_channels=256,
        pred_hidden=640, pred_rnn_layers=2, joint_hidden=640, vocab_size=1024,
    ),
    # Same structure, small sizes (~0.3M parameters): builds in seconds, trains on 2 CPU cores
    # in about five minutes.
    "tiny": Architecture(
        n_layers=3, d_model=64, n_heads=4, subsampling_conv_channels=32,
        pred_hidden=64, pred_rnn_layers=1, joint_hidden=64, vocab_size=32,
        # The convolutional subsampling over the mel bins costs most of a training step: half
        # the bins, nearly half the time (the tones sit far apart in 64 bins too).
        n_mels=64,
        # Trained only on endless fresh synthetic audio, it cannot overfit: dropout would only
        # slow its training and make its accuracy noisy.
        dropout=0.0,
    ),
    # Same structure, sized for a small vocabulary of real speech (the spoken-digits model,
    # ~3M parameters): 80 mel bins as NeMo's FastConformer recipes, SpecAugment, and dropout,
    # since its training voices are few compared with the speakers it must hear.
    "small": Architecture(
        n_layers=6, d_model=144, n_heads=4, subsampling_conv_channels=64,
        pred_hidden=160, pred_rnn_layers=1, joint_hidden=160, vocab_size=64, n_mels=80,
        dropout=0.1, spec_augment=True,
    ),
    # Same structure, next to no compute (~11k parameters), for benchmarks of what a step and the
    # server cost besides the model: on a GPU that is most of a step. On the CPU its server, like
    # the GPU's, runs out of Python time (event loop and engine thread) at a few hundred streams.
    "micro": Architecture(
        n_layers=1, d_model=16, n_heads=2, subsampling_conv_channels=4,
        pred_hidden=16, pred_rnn_layers=1, joint_hidden=16, vocab_size=32, n_mels=16, dropout=0.0,
    ),
}


def model_config(arch: Architecture, tokenizer_dir: str) -> DictConfig:
    """A NeMo ``EncDecRNNTBPEModel`` config for ``arch`` (published nemotron layout, resized)."""
    cfg: dict[str, Any] = {
        "sample_rate": 16000,
        "tokenizer": {"dir": tokenizer_dir, "type": "bpe"},
        "model_defaults": {
            "enc_hidden": arch.d_model,
            "pred_hidden": arch.pred_hidden,
            "joint_hidden": arch.joint_hidden,
        },
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000,
            "normalize": "NA",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": arch.n_mels,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 1.0e-05,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": arch.n_mels,
            "feat_out": -1,
            "n_layers": arch.n_layers,
            "d_model": arch.d_model,
            "use_bias": False,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": arch.subsampling_conv_channels,
            "causal_downsampling": True,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": arch.n_heads,
            "att_context_size": [list(size) for size in ATT_CONTEXT_SIZES],
            "att_context_probs": None,
            "att_context_style": "chunked_limited",
            "xscaling": True,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 9,
            "conv_norm_type": "layer_norm",
            "conv_context_size": "causal",
            "dropout": arch.dropout,
            "dropout_pre_encoder": arch.dropout,
            "dropout_emb": 0.0,
            "dropout_att": arch.dropout,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {
                "pred_hidden": arch.pred_hidden,
                "pred_rnn_layers": arch.pred_rnn_layers,
                "t_max": None,
                "dropout": 2 * arch.dropout,
            },
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "jointnet": {"joint_hidden": arch.joint_hidden, "activation": "relu", "dropout": 2 * arch.dropout},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        # The pure-PyTorch loss needs no numba JIT warm-up; the tone model's sequences are short.
        "loss": {"loss_name": "pytorch"},
        "optim": None,
    }
    if arch.spec_augment:
        # Masks sized for short utterances (1-5 s) and 80 bins; applied only in training mode.
        cfg["spec_augment"] = {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": 2, "freq_width": 12, "time_masks": 2, "time_width": 0.05,
        }
    return OmegaConf.create(cfg)


def build_tokenizer(corpus: list[str], vocab_size: int, out_dir: str) -> str:
    """Train a SentencePiece BPE tokenizer on ``corpus`` into ``out_dir``; return the dir.

    ``hard_vocab_limit=False``: a small corpus yields fewer pieces than asked, not an error.
    """
    import_nemo_asr()
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    os.makedirs(out_dir, exist_ok=True)
    corpus_file = os.path.join(out_dir, "corpus.txt")
    Path(corpus_file).write_text("\n".join(corpus) + "\n")
    model_path, _ = create_spt_model(
        data_file=corpus_file,
        vocab_size=vocab_size,
        sample_size=-1,
        do_lower_case=True,
        output_dir=out_dir,
        tokenizer_type="bpe",
        character_coverage=1.0,
        train_extremely_large_corpus=False,
        max_sentencepiece_length=-1,
        bos=False,
        eos=False,
        pad=False,
        user_defined_symbols=None,
        byte_fallback=False,
        split_digits=False,
        split_by_whitespace=True,
        split_by_unicode_script=True,
    )
    os.remove(corpus_file)
    return os.path.dirname(model_path)


def shipped_corpus() -> list[str]:
    """English text shipped with streamd for training untrained models' tokenizers."""
    text = resources.files("streamd.models").joinpath("data/tokenizer_corpus.txt").read_text()
    return [line for line in text.splitlines() if line]


def build_model(arch_name: str, corpus: list[str] | None = None, seed: int = 0) -> Any:
    """Build an untrained ``EncDecRNNTBPEModel`` of ``arch_name`` (same seed, same weights)."""
    if arch_name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch_name!r}: choose from {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[arch_name]
    nemo_asr = import_nemo_asr()
    # The model keeps the tokenizer files' paths as artifacts until save_to() packs them, so
    # the directory must outlive this call; it is removed when the process exits.
    tok_dir = tempfile.mkdtemp(prefix="streamd-tok-")
    atexit.register(shutil.rmtree, tok_dir, ignore_errors=True)
    build_tokenizer(corpus or shipped_corpus(), arch.vocab_size, tok_dir)
    torch.manual_seed(seed)
    model = nemo_asr.models.EncDecRNNTBPEModel(cfg=model_config(arch, tok_dir))
    mark_origin(model, arch=arch_name, seed=seed, trained=None)
    model.eval()
    return model


def mark_origin(model: Any, **origin: Any) -> None:
    """Record how streamd made the model in its config (saved inside the .nemo)."""
    with open_dict(model.cfg):
        model.cfg.streamd = {**(model.cfg.get("streamd") or {}), **origin}


