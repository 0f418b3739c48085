"""RNNT parity: the same ``.nemo`` model on two devices/dtypes, offline and streaming.

Checks per file: log-mel features and encoder output relative error (Frobenius), max absolute
error (informational), and identical tokens — for the whole-utterance (offline) path and for
the streaming engine's chunk-by-chunk path. Features are computed in float32 on both sides
(streamd keeps the preprocessor in float32), so their error measures the device alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from streamd.audio import load_audio
from streamd.engine.engine import StreamingEngine
from streamd.engine.offline import encode_offline, transcribe_offline
from streamd.engine.stream import StreamOptions
from streamd.offline import metrics
from streamd.offline.report import Check, Comparison, SideResult, SideSpec, timed_mean
from streamd.transcribe import transcribe_streaming

FEATURES_REL_ERR_MAX = 1e-3
ENCODER_REL_ERR_MAX = 0.01


@dataclass
class RnntSideOutput:
    features: torch.Tensor  # [n_mels, T] float32
    encoded: torch.Tensor  # offline encoder output [D, T'] float32
    tokens: list[int]
    streaming_encoded: torch.Tensor
    streaming_tokens: list[int]


def parity_side(model_path: str, files: list[str], att_context_size: tuple[int, int], warmup: int, runs: int
                ) -> Callable[[SideSpec], SideResult]:
    """A ``run_side`` for :func:`streamd.offline.report.run_checks`."""
    from streamd.engine.loading import load_model

    rate = int(load_model(model_path).cfg.preprocessor.sample_rate)
    audio = {path: load_audio(path, rate) for path in files}
    total_audio = sum(seconds for _, seconds in audio.values())

    def run(side: SideSpec) -> SideResult:
        from streamd.engine.loading import prepare_model

        model = prepare_model(model_path, side.device, side.dtype)
        device = next(model.parameters()).device
        outputs: dict[str, RnntSideOutput] = {}
        offline_s = streaming_s = 0.0
        options = StreamOptions(att_context_size=att_context_size)
        for path, (samples, _) in audio.items():
            feats, feat_len, encoded, encoded_len = encode_offline(model, [samples], att_context_size)
            (offline,) = transcribe_offline(model, [samples], att_context_size)
            engine = StreamingEngine(model, max_streams=1, record_encoder_output=True)
            (streamed,) = transcribe_streaming(engine, [samples], options)
            chunks = engine.encoder_outputs[next(iter(engine.encoder_outputs))] if engine.encoder_outputs else []
            outputs[path] = RnntSideOutput(
                features=feats[0, :, : int(feat_len[0])].float().cpu(),
                encoded=encoded[0, :, : int(encoded_len[0])].float().cpu(),
                tokens=offline.tokens,
                streaming_encoded=torch.cat(chunks, dim=1) if chunks else torch.zeros(encoded.shape[1], 0),
                streaming_tokens=streamed.tokens,
            )
            offline_s += timed_mean(lambda s=samples: transcribe_offline(model, [s], att_context_size),
                                    device, warmup, runs)
            streaming_s += timed_mean(
                lambda s=samples: transcribe_streaming(StreamingEngine(model, max_streams=1), [s], options),
                device, warmup, runs)
        timing = {"audio_s": total_audio, "offline_mean_s": offline_s, "offline_rtf": offline_s / total_audio,
                  "streaming_mean_s": streaming_s, "streaming_rtf": streaming_s / total_audio}
        return SideResult(outputs, timing)

    return run


def _token_mismatches(ref: list[int], test: list[int]) -> int:
    return sum(a != b for a, b in zip(ref, test)) + abs(len(ref) - len(test))


def compare(ref: SideResult, test: SideResult) -> Comparison:
    checks: list[Check] = []
    info: dict[str, dict[str, float]] = {}
    for path, r in ref.outputs.items():
        t: RnntSideOutput = test.outputs[path]
        checks += [
            Check("features_rel_err", metrics.relative_error(r.features, t.features), "<", FEATURES_REL_ERR_MAX,
                  path),
            Check("encoder_rel_err", metrics.relative_error(r.encoded, t.encoded), "<", ENCODER_REL_ERR_MAX, path),
            Check("token_mismatches", _token_mismatches(r.tokens, t.tokens), "==", 0, path),
            Check("streaming_encoder_rel_err", metrics.relative_error(r.streaming_encoded, t.streaming_encoded),
                  "<", ENCODER_REL_ERR_MAX, path),
            Check("streaming_token_mismatches", _token_mismatches(r.streaming_tokens, t.streaming_tokens),
                  "==", 0, path),
        ]
        info[path] = {
            "features_max_abs_diff": metrics.max_abs_diff(r.features, t.features),
            "encoder_max_abs_diff": metrics.max_abs_diff(r.encoded, t.encoded),
            "encoder_cosine": metrics.cosine_similarity(r.encoded, t.encoded),
            "streaming_encoder_max_abs_diff": metrics.max_abs_diff(r.streaming_encoded, t.streaming_encoded),
            "streaming_vs_offline_max_abs_diff_ref": metrics.max_abs_diff(r.encoded, r.streaming_encoded),
            "tokens": float(len(r.tokens)),
        }
    return Comparison(checks, info)
