"""Offline Whisper (transformers ``WhisperForConditionalGeneration``): transcription and parity sides.

Files of up to 30 s are batched into one padded forward. When a batch holds a longer file, HF's
sequential long-form decoding runs instead (it needs timestamp prediction and an attention mask).
Greedy decoding throughout, so two precisions can be compared token for token.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from streamd.audio import load_audio
from streamd.devices import check_dtype_supported, parse_dtype, resolve_device
from streamd.log import get_logger
from streamd.offline import metrics
from streamd.offline.report import Check, Comparison, SideResult, SideSpec, require_model_dir, timed_mean

log = get_logger(__name__)

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30.0
BATCH_SIZE = 8
# Parity thresholds (docs/parity.md).
ENCODER_COSINE_MIN = 0.999
LOGITS_REL_ERR_MAX = 0.01
MASKED_REL_MIN_ABS = 0.1


@dataclass
class Decoded:
    """Greedy output of one batch: text token ids per item and, on request, first-step logits."""

    tokens: list[list[int]]
    first_logits: torch.Tensor | None  # (batch, vocab) float32 on the CPU


class WhisperRunner:
    """A Whisper model and processor on one device/dtype, with the calls the tools need."""

    def __init__(self, model_dir: str, device: str = "cpu", dtype: str = "float32") -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype)
        check_dtype_supported(self.device, self.dtype)
        require_model_dir(model_dir, "Whisper")
        self.processor = WhisperProcessor.from_pretrained(model_dir)
        self.model = WhisperForConditionalGeneration.from_pretrained(
            model_dir, dtype=self.dtype, attn_implementation="sdpa"
        ).to(self.device).eval()
        # Text tokens are the byte-pair ranks, all below <|endoftext|>; control and timestamp
        # tokens come after it in both the English-only and the multilingual vocabularies.
        self.eot = self.model.generation_config.eos_token_id

    def features(self, audios: list[np.ndarray], long_form: bool = False) -> dict[str, torch.Tensor]:
        """Log-mel inputs: padded/truncated to the 30 s window, or (long form) to the longest file.

        The frame mask goes along in both cases: long-form decoding needs it to find each file's
        end, and with it short-form batches do not trip transformers' missing-mask warning.
        """
        extra = {"truncation": False, "padding": "longest"} if long_form else {}
        batch = self.processor(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                               return_attention_mask=True, **extra)
        return {"input_features": batch.input_features.to(self.device, self.dtype),
                "attention_mask": batch.attention_mask.to(self.device)}

    @torch.inference_mode()
    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Encoder last hidden state, (batch, frames, d_model) in the model dtype."""
        return self.model.model.encoder(inputs["input_features"]).last_hidden_state

    @torch.inference_mode()
    def generate(self, inputs: dict[str, torch.Tensor], first_logits: bool = False) -> Decoded:
        """Greedy decoding; ``first_logits`` also returns the raw logits of the first generated step."""
        long_form = inputs["input_features"].shape[-1] > self.model.config.max_source_positions * 2
        # A copy per call: Whisper's generate writes its arguments into the config it is given, so
        # a call with logits would leave output_logits set for the next one (which warns).
        config = copy.deepcopy(self.model.generation_config)
        config.update(num_beams=1, do_sample=False, return_dict_in_generate=first_logits, output_logits=first_logits)
        out = self.model.generate(**inputs, generation_config=config, return_timestamps=long_form)
        sequences = out.sequences if first_logits else out
        tokens = [[t for t in row.tolist() if t < self.eot] for row in sequences]
        return Decoded(tokens, out.logits[0].float().cpu() if first_logits else None)

    def text(self, tokens: list[int]) -> str:
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def _load_all(files: list[str]) -> list[tuple[np.ndarray, float]]:
    """Decode every file up front so a bad one fails (``ValueError`` naming it) before model time."""
    return [load_audio(path, SAMPLE_RATE) for path in files]


def _result(path: str, seconds: float, text: str, tokens: list[int], compute_seconds: float) -> dict:
    return {"file": path, "text": text, "tokens": tokens, "audio_seconds": round(seconds, 3),
            "compute_seconds": round(compute_seconds, 4), "engine": "whisper"}


def transcribe_files(model_dir: str, files: list[str], device: str = "cpu", dtype: str = "float32",
                     batch_size: int = BATCH_SIZE) -> list[dict]:
    """Transcribe ``files`` in batches of ``batch_size``; one result dict per file, in order.

    ``compute_seconds`` is the batch's wall time split evenly over its files (Whisper pays for a
    full 30 s window per file whatever its length). Empty audio gets an empty transcript without
    a forward, as in the streaming engine. Raises ``ValueError`` naming a bad file.
    """
    audio = _load_all(files)
    runner = WhisperRunner(model_dir, device, dtype)
    results = [_result(path, seconds, "", [], 0.0) for path, (_, seconds) in zip(files, audio, strict=True)]
    spoken = [i for i, (samples, _) in enumerate(audio) if len(samples)]
    for start in range(0, len(spoken), batch_size):
        batch = spoken[start:start + batch_size]
        long_form = any(audio[i][1] > WINDOW_SECONDS for i in batch)
        began = time.perf_counter()
        decoded = runner.generate(runner.features([audio[i][0] for i in batch], long_form))
        per_file = (time.perf_counter() - began) / len(batch)
        for i, tokens in zip(batch, decoded.tokens, strict=True):
            results[i] = _result(files[i], audio[i][1], runner.text(tokens), tokens, per_file)
    log.info("whisper transcribed", files=len(files), device=str(runner.device), dtype=dtype)
    return results


@dataclass
class WhisperSideOutput:
    """One file's parity outputs, float32 on the CPU."""

    encoder: torch.Tensor
    first_logits: torch.Tensor
    tokens: list[int]


def parity_side(model_dir: str, files: list[str], warmup: int, runs: int) -> Callable[[SideSpec], SideResult]:
    """A ``run_side`` for :func:`streamd.offline.report.run_checks`: all files in one batch.

    Inputs are cut to the first 30 s window (the encoder's fixed input), so long files are
    compared on their first window only.
    """
    audio = _load_all(files)
    total_audio = sum(seconds for _, seconds in audio)

    def run(side: SideSpec) -> SideResult:
        runner = WhisperRunner(model_dir, side.device, side.dtype)
        inputs = runner.features([samples for samples, _ in audio])
        encoder = runner.encode(inputs).float().cpu()
        decoded = runner.generate(inputs, first_logits=True)
        encoder_s = timed_mean(lambda: runner.encode(inputs), runner.device, warmup, runs)
        generate_s = timed_mean(lambda: runner.generate(inputs), runner.device, warmup, runs)
        outputs = {path: WhisperSideOutput(encoder[i], decoded.first_logits[i], decoded.tokens[i])
                   for i, path in enumerate(files)}
        timing = {"audio_s": total_audio, "encoder_mean_s": encoder_s, "encoder_rtf": encoder_s / total_audio,
                  "generate_mean_s": generate_s, "generate_rtf": generate_s / total_audio}
        return SideResult(outputs, timing)

    return run


def token_mismatches(ref: list[int], test: list[int]) -> int:
    """Positions where two token sequences differ, counting every extra token of the longer one."""
    return sum(a != b for a, b in zip(ref, test, strict=False)) + abs(len(ref) - len(test))


def compare(ref: SideResult, test: SideResult) -> Comparison:
    """Whisper checks per file: encoder cosine, first-step logits error, identical greedy tokens."""
    checks: list[Check] = []
    info: dict[str, dict[str, float]] = {}
    for path, r in ref.outputs.items():
        t: WhisperSideOutput = test.outputs[path]
        checks += [
            Check("encoder_cosine", metrics.cosine_similarity(r.encoder, t.encoder), ">", ENCODER_COSINE_MIN,
                  path),
            Check("first_step_logits_rel_err", metrics.relative_error(r.first_logits, t.first_logits), "<",
                  LOGITS_REL_ERR_MAX, path),
            Check("generated_token_mismatches", token_mismatches(r.tokens, t.tokens), "==", 0, path),
        ]
        info[path] = {
            "encoder_max_abs_diff": metrics.max_abs_diff(r.encoder, t.encoder),
            "encoder_mean_abs_diff": metrics.mean_abs_diff(r.encoder, t.encoder),
            "encoder_masked_rel_err_mean": metrics.masked_relative_error(r.encoder, t.encoder,
                                                                         MASKED_REL_MIN_ABS),
            "encoder_rel_err": metrics.relative_error(r.encoder, t.encoder),
            "ref_tokens": len(r.tokens),
            "test_tokens": len(t.tokens),
        }
    return Comparison(checks, info)
