"""Give an untrained RNNT a trained model's token rate, for honest speed benchmarks.

An untrained RNNT's joint favours no output, so greedy decoding emits its maximum number of
symbols (10) on almost every encoder frame: about 125 tokens per second of audio, where a
trained English model emits 3–5. The decoder's and the transcript bookkeeping's cost grow with
the tokens, so an untrained model's speed says little about the real model's. Raising only the
blank output's logit makes blank win on most frames: the encoder (the shapes and FLOPs the
benchmark is about) is untouched, and the decoder runs about as often as it would for real
speech. The bias is found per att_context_size by bisection on benchmark audio (tone sequences,
as the benchmarks stream), decoding one precomputed encoder output again for each candidate; it
is stored in the model's config, and whatever decodes a size (the engine, offline transcription)
sets the joint's blank output bias to that size's value first (:mod:`streamd.engine.blank_bias`).

Greedy decoding is also capped at ``MAX_SYMBOLS`` tokens per frame. An RNNT's decoder sees only
the tokens so far, never the frame, so a random one that emits on a frame tends to go on emitting
there up to the cap: with the cap at 10, a few such frames made most of the calibrated rate and
other audio of the same kind got a third of it. A trained model rarely emits more than two
tokens on one 80 ms frame; with the cap at two, held-out audio lands near the target
(tests/test_token_rate.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from streamd.engine.blank_bias import blank_output
from streamd.engine.loading import configure_decoding
from streamd.engine.offline import encode_offline
from streamd.models import tones
from streamd.models.architectures import mark_origin

MAX_SYMBOLS = 2
BISECTION_STEPS = 20
BIAS_RANGE = (-20.0, 60.0)  # logit units; far beyond what random weights produce either way


@dataclass(frozen=True)
class TokenRate:
    """What calibration found for one att_context_size."""

    added_bias: float  # added to the blank output's bias
    output_bias: float  # the blank output's bias with it
    measured_per_s: float  # the rate with it, on the calibration audio
    untouched_per_s: float  # the rate without it


def calibration_audio(seconds: float, seed: int = 1) -> list[np.ndarray]:
    """The audio the benchmarks stream (:func:`streamd.models.tones.random_audio`), as 5 s utterances."""
    rng = np.random.default_rng(seed)
    return [tones.random_audio(rng, 5.0) for _ in range(max(1, round(seconds / 5)))]


@torch.inference_mode()
def tokens_per_second(model: Any, encoded: torch.Tensor, encoded_len: torch.Tensor, audio_s: float) -> float:
    """Tokens that greedy decoding emits for an encoder output, per second of its audio."""
    hyps = model.decoding.rnnt_decoder_predictions_tensor(encoded, encoded_len, return_hypotheses=True)
    return sum(len(h.y_sequence) for h in hyps) / audio_s


@torch.inference_mode()
def calibrate_size(model: Any, target_per_s: float, audio: list[np.ndarray], att_context_size: tuple[int, int]
                   ) -> TokenRate:
    """The blank bias that makes the model emit ``target_per_s`` tokens per second of ``audio`` at
    one att_context_size (within a bisection's resolution). The model is left as it was."""
    layer, blank = blank_output(model)
    audio_s = sum(len(a) for a in audio) / tones.SAMPLE_RATE
    _, _, encoded, encoded_len = encode_offline(model, audio, att_context_size)
    original = float(layer.bias[blank])

    def rate_with(bias: float) -> float:
        layer.bias[blank] = original + bias
        return tokens_per_second(model, encoded, encoded_len, audio_s)

    try:
        untouched = rate_with(0.0)
        low, high = BIAS_RANGE  # the rate falls as the bias rises
        for _ in range(BISECTION_STEPS):
            middle = (low + high) / 2
            if rate_with(middle) > target_per_s:
                low = middle
            else:
                high = middle
        rates = {bias: rate_with(bias) for bias in (low, high)}
    finally:
        layer.bias[blank] = original
    bias = min(rates, key=lambda b: abs(rates[b] - target_per_s))  # the bracket's end nearer the target
    return TokenRate(bias, original + bias, rates[bias], untouched)


def calibrate_token_rate(model: Any, target_per_s: float, audio: list[np.ndarray]
                         ) -> dict[tuple[int, int], TokenRate]:
    """Calibrate every att_context_size of an untrained model to ``target_per_s`` and record the
    result in its config (saved with it) for the engine. One bias cannot serve all sizes: a random
    encoder's outputs at different attention contexts sit at different distances from the blank
    (nemotron-0.6b: a bias giving 4 tokens/s at [70, 13] gave none at [70, 1])."""
    if target_per_s <= 0:
        raise ValueError("the target token rate must be positive")
    configure_decoding(model, "greedy_batch", loop_labels=True, max_symbols=MAX_SYMBOLS)
    sizes = [tuple(s) for s in model.encoder.att_context_size_all]
    found = {size: calibrate_size(model, target_per_s, audio, size) for size in sizes}
    mark_origin(model, token_rate={
        "tokens_per_second": target_per_s,
        "max_symbols": MAX_SYMBOLS,
        "sizes": [{"att_context_size": list(size), **asdict(rate)} for size, rate in found.items()],
    })
    return found
