"""Offline (whole-utterance) transcription with a chosen att_context_size.

The reference that streaming must equal: with ``chunked_limited`` attention, the offline
encoder sees exactly the context a streaming step sees, so the tokens must match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamd.engine.blank_bias import BlankBias
from streamd.engine.decoding import Word, tokens_to_text, tokens_to_words


@dataclass
class Transcript:
    text: str
    tokens: list[int]
    frames: list[int]  # encoder frame of each token
    words: list[Word] = field(default_factory=list)


def model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.encoder.parameters())
    return parameter.device, parameter.dtype


def frame_seconds(model: Any) -> float:
    return float(model.cfg.preprocessor.window_stride) * int(model.encoder.subsampling_factor)


def hypothesis_frames(hyp: Any) -> list[int]:
    stamps = hyp.timestamp
    if isinstance(stamps, dict):  # some decoders return {"timestep": [...], ...}
        stamps = stamps.get("timestep", [])
    if torch.is_tensor(stamps):
        stamps = stamps.tolist()
    return [int(t) for t in stamps]


def hypothesis_tokens(hyp: Any) -> list[int]:
    seq = hyp.y_sequence
    return [int(t) for t in (seq.tolist() if torch.is_tensor(seq) else seq)]


@torch.inference_mode()
def encode_offline(model: Any, audios: list[np.ndarray], att_context_size: tuple[int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features and encoder output of whole utterances: (feats, feat_len, encoded, encoded_len)."""
    device, dtype = model_device_dtype(model)
    lengths = torch.tensor([len(a) for a in audios], device=device)
    batch = torch.zeros(len(audios), max(int(lengths.max()), 1), device=device)
    for i, audio in enumerate(audios):
        batch[i, : len(audio)] = torch.from_numpy(np.asarray(audio, np.float32)).to(device)
    feats, feat_len = model.preprocessor(input_signal=batch, length=lengths)
    model.encoder.set_default_att_context_size(list(att_context_size))
    encoded, encoded_len = model.encoder(audio_signal=feats.to(dtype), length=feat_len)
    return feats, feat_len, encoded, encoded_len


@torch.inference_mode()
def transcribe_offline(model: Any, audios: list[np.ndarray], att_context_size: tuple[int, int],
                       word_timestamps: bool = True) -> list[Transcript]:
    """Transcribe float32 mono 16 kHz utterances in one batch.

    Audio without samples gets an empty transcript without reaching the model: the featurizer
    would still make one (padding) frame of it, and a model may hear a letter in it.
    """
    results = [Transcript("", [], []) for _ in audios]
    present = [i for i, audio in enumerate(audios) if len(audio)]
    if not present:
        return results
    _, _, encoded, encoded_len = encode_offline(model, [audios[i] for i in present], att_context_size)
    BlankBias(model).use(att_context_size)  # a token-rate calibrated model's, as streaming decodes
    hyps = model.decoding.rnnt_decoder_predictions_tensor(encoded, encoded_len, return_hypotheses=True)
    frame_s = frame_seconds(model)
    for i, hyp in zip(present, hyps):
        tokens, frames = hypothesis_tokens(hyp), hypothesis_frames(hyp)
        words = tokens_to_words(model.tokenizer, tokens, frames, frame_s) if word_timestamps else []
        results[i] = Transcript(tokens_to_text(model.tokenizer, tokens), tokens, frames, words)
    return results
