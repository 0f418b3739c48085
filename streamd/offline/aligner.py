"""CTC forced alignment of a transcript to audio with a character ``Wav2Vec2ForCTC`` model.

Built for the MMS-300m forced-aligner layout: a character vocabulary, the CTC blank at the
model's ``pad_token_id`` and ``|`` as the word delimiter. The alignment is a Viterbi search over
the usual CTC state graph (blank, c1, blank, c2, ..., blank): a frame stays in its state,
advances one state, or skips a blank between two different characters. Repeated characters
therefore get a blank between them, as CTC requires. Each step is vectorised over states in
numpy, so 5 s of audio aligns in under 2 ms on one CPU core (``bench/align_speed.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from streamd.audio import load_audio
from streamd.devices import check_dtype_supported, parse_dtype, resolve_device
from streamd.log import get_logger
from streamd.offline import metrics
from streamd.offline.report import Check, Comparison, SideResult, SideSpec, require_model_dir, timed_mean

log = get_logger(__name__)

SAMPLE_RATE = 16000
# wav2vec2's first output frame needs 400 samples (25 ms); shorter input cannot be aligned.
MIN_SAMPLES = 400
# Parity thresholds (docs/parity.md).
LOGITS_REL_ERR_MAX = 0.01
WITHIN_1PCT_MIN = 0.99


def forced_align(log_probs: np.ndarray, targets: Sequence[int], blank: int) -> tuple[np.ndarray, float]:
    """Best CTC path of ``targets`` through ``log_probs`` (frames x vocab).

    Returns ``(path, score)``: ``path[t]`` is the index into ``targets`` emitted at frame ``t``, or
    -1 for a blank frame, and ``score`` the path's summed log-probability. Raises ``ValueError``
    when no path exists (the transcript needs more frames than the audio has).

    The forward pass keeps every frame's state scores instead of back-pointers, so each step is
    three in-place numpy maxima; the backtrack re-derives the chosen predecessor from them
    (ties prefer staying, then advancing one state, as the forward maxima do).
    """
    frames, num_targets = log_probs.shape[0], len(targets)
    labels = np.full(2 * num_targets + 1, blank, dtype=np.int64)
    labels[1::2] = targets
    states = labels.size
    emissions = np.asarray(log_probs, dtype=np.float64)[:, labels]
    # A skip (s-2 -> s) is allowed into a character that differs from the previous character.
    skip_penalty = np.full(states, -np.inf)
    skip_penalty[3::2] = np.where(labels[3::2] != labels[1:-2:2], 0.0, -np.inf)
    alpha = np.full((frames, states), -np.inf)
    alpha[0, :2] = emissions[0, :2]
    skip = np.empty(states - 2)
    for t in range(1, frames):
        prev, cur = alpha[t - 1], alpha[t]
        cur[0] = prev[0]
        np.maximum(prev[1:], prev[:-1], out=cur[1:])
        np.add(prev[:-2], skip_penalty[2:], out=skip)
        np.maximum(cur[2:], skip, out=cur[2:])
        cur += emissions[t]
    state = states - 1 if states == 1 or alpha[-1, -1] >= alpha[-1, -2] else states - 2
    total = float(alpha[-1, state])
    if not np.isfinite(total):
        raise ValueError(f"no CTC path: {num_targets} tokens cannot be aligned to {frames} frames")
    path = np.empty(frames, dtype=np.int64)
    for t in range(frames - 1, 0, -1):
        path[t] = state // 2 if state % 2 else -1
        prev = alpha[t - 1]
        best = prev[state]
        if state >= 1 and prev[state - 1] > best:
            best, step = prev[state - 1], 1
        else:
            step = 0
        if state >= 2 and prev[state - 2] + skip_penalty[state] > best:
            step = 2
        state -= step
    path[0] = state // 2 if state % 2 else -1
    return path, total


@dataclass(frozen=True)
class Segment:
    """An aligned token or word: frames ``[start_frame, end_frame)`` and the same in seconds."""

    label: str
    start_frame: int
    end_frame: int
    start: float
    end: float
    score: float  # exp(mean log-probability over the span; words: over their characters), 1.0 = certain

    def to_dict(self) -> dict:
        return {**asdict(self), "start": round(self.start, 3), "end": round(self.end, 3),
                "score": round(self.score, 4)}


@dataclass(frozen=True)
class Alignment:
    tokens: list[Segment]
    words: list[Segment]

    def to_dict(self) -> dict:
        return {"tokens": [s.to_dict() for s in self.tokens], "words": [s.to_dict() for s in self.words]}


@dataclass(frozen=True)
class CharVocabulary:
    """Maps a transcript to model token ids: lower-cased characters, ``|`` between words."""

    ids: dict[str, int]
    blank: int
    delimiter: str | None

    def encode(self, transcript: str) -> tuple[list[str], list[str]]:
        """``(tokens, words)``; characters missing from the vocabulary are dropped (logged)."""
        words, dropped = [], set()
        for raw in transcript.lower().split():
            word = "".join(ch for ch in raw if ch in self.ids and ch != self.delimiter)
            dropped.update(ch for ch in raw if ch not in self.ids)
            if word:
                words.append(word)
        if dropped:
            log.warning("characters not in the aligner vocabulary dropped", chars="".join(sorted(dropped)))
        if not words:
            raise ValueError(f"transcript {transcript!r} has no characters from the model vocabulary")
        separator = [self.delimiter] if self.delimiter in self.ids else []
        tokens: list[str] = []
        for i, word in enumerate(words):
            tokens += (separator if i else []) + list(word)
        return tokens, words


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 numpy (no torch thread pool on this small, hot path)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def align_tokens(
    log_probs: np.ndarray, vocab: CharVocabulary, transcript: str, frame_seconds: float
) -> Alignment:
    """Force-align ``transcript``; token segments plus word segments spanning their characters."""
    tokens, words = vocab.encode(transcript)
    ids = np.array([vocab.ids[t] for t in tokens])
    path, _ = forced_align(log_probs, ids.tolist(), vocab.blank)
    frames = np.flatnonzero(path >= 0)
    owners = path[frames]
    first = np.r_[True, owners[1:] != owners[:-1]]
    starts, ends = frames[first], frames[np.r_[first[1:], True]] + 1
    # Mean log-probability of each token over its own frames, one reduceat for all tokens.
    mean_lp = np.add.reduceat(log_probs[frames, ids[owners]], np.flatnonzero(first)) / (ends - starts)
    segments = [Segment(label, start, end, start * frame_seconds, end * frame_seconds, math.exp(lp))
                for label, start, end, lp in zip(tokens, starts.tolist(), ends.tolist(), mean_lp.tolist(),
                                                 strict=True)]
    chars = [(segment, lp) for segment, lp in zip(segments, mean_lp.tolist(), strict=True)
             if segment.label != vocab.delimiter]
    word_segments, cursor = [], 0
    for word in words:
        span = chars[cursor:cursor + len(word)]
        cursor += len(word)
        first_char, last_char = span[0][0], span[-1][0]
        score = math.exp(sum(lp for _, lp in span) / len(span))
        word_segments.append(Segment(word, first_char.start_frame, last_char.end_frame, first_char.start,
                                     last_char.end, score))
    return Alignment(segments, word_segments)


class AlignerRunner:
    """A ``Wav2Vec2ForCTC`` model with its processor on one device/dtype."""

    def __init__(self, model_dir: str, device: str = "cpu", dtype: str = "float32") -> None:
        from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype)
        check_dtype_supported(self.device, self.dtype)
        require_model_dir(model_dir, "Wav2Vec2 CTC")
        self.processor = Wav2Vec2Processor.from_pretrained(model_dir)
        self.model = Wav2Vec2ForCTC.from_pretrained(model_dir, dtype=self.dtype).to(self.device).eval()
        tokenizer = self.processor.tokenizer
        blank = self.model.config.pad_token_id
        self.vocab = CharVocabulary(tokenizer.get_vocab(), tokenizer.pad_token_id if blank is None else blank,
                                    tokenizer.word_delimiter_token)
        self.frame_seconds = self.model.config.inputs_to_logits_ratio / SAMPLE_RATE

    @torch.inference_mode()
    def logits(self, samples: np.ndarray) -> torch.Tensor:
        """CTC logits (frames, vocab) in the model dtype, on the model device."""
        inputs = self.processor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
        return self.model(inputs.to(self.device, self.dtype)).logits[0]

    def align(self, logits: torch.Tensor, transcript: str) -> Alignment:
        log_probs = log_softmax(logits.float().cpu().numpy())
        return align_tokens(log_probs, self.vocab, transcript, self.frame_seconds)


def load_speech(path: str) -> tuple[np.ndarray, float]:
    """16 kHz mono samples and duration; ``ValueError`` naming the file if unreadable or too short."""
    samples, seconds = load_audio(path, SAMPLE_RATE)
    if len(samples) < MIN_SAMPLES:
        raise ValueError(f"{path}: {seconds:.3f} s of audio is too short to align")
    return samples, seconds


def align_file(
    model_dir: str, path: str, transcript: str, device: str = "cpu", dtype: str = "float32"
) -> dict:
    """Align one file: ``{"file", "transcript", "audio_seconds", "tokens": [...], "words": [...]}``."""
    samples, seconds = load_speech(path)
    runner = AlignerRunner(model_dir, device, dtype)
    return {"file": path, "transcript": transcript, "audio_seconds": round(seconds, 3),
            **runner.align(runner.logits(samples), transcript).to_dict()}


@dataclass
class AlignerSideOutput:
    logits: torch.Tensor  # float32, CPU
    alignment: Alignment


def transcripts_per_file(transcripts: list[str], files: list[str]) -> list[str]:
    """One transcript for every file, or one per file in order; ``ValueError`` otherwise."""
    per_file = transcripts * len(files) if len(transcripts) == 1 else transcripts
    if len(per_file) != len(files):
        raise ValueError(f"give one --transcript, or one per audio file ({len(files)})")
    return per_file


def parity_side(model_dir: str, files: list[str], transcripts: list[str], warmup: int, runs: int
                ) -> Callable[[SideSpec], SideResult]:
    """A ``run_side`` for :func:`streamd.offline.report.run_checks`: one forward per file."""
    audio = [load_speech(path) for path in files]
    total_audio = sum(seconds for _, seconds in audio)

    def run(side: SideSpec) -> SideResult:
        runner = AlignerRunner(model_dir, side.device, side.dtype)
        outputs, forward_s, align_s = {}, 0.0, 0.0
        for path, (samples, _), transcript in zip(files, audio, transcripts, strict=True):
            logits = runner.logits(samples)
            outputs[path] = AlignerSideOutput(logits.float().cpu(), runner.align(logits, transcript))
            forward_s += timed_mean(lambda s=samples: runner.logits(s), runner.device, warmup, runs)
            began = time.perf_counter()
            runner.align(logits, transcript)
            align_s += time.perf_counter() - began
        timing = {"audio_s": total_audio, "forward_mean_s": forward_s, "forward_rtf": forward_s / total_audio,
                  "align_s": align_s}
        return SideResult(outputs, timing)

    return run


def segment_mismatches(ref: Alignment, test: Alignment) -> int:
    """Token and word segments whose label or frame span differs, plus any count difference."""
    pairs = [*zip(ref.tokens, test.tokens, strict=False), *zip(ref.words, test.words, strict=False)]
    differ = sum((a.label, a.start_frame, a.end_frame) != (b.label, b.start_frame, b.end_frame)
                 for a, b in pairs)
    return differ + abs(len(ref.tokens) - len(test.tokens)) + abs(len(ref.words) - len(test.words))


def compare(ref: SideResult, test: SideResult) -> Comparison:
    """Aligner checks per file: logits Frobenius error, share within 1 %, identical alignment."""
    checks: list[Check] = []
    info: dict[str, dict[str, float]] = {}
    for path, r in ref.outputs.items():
        t: AlignerSideOutput = test.outputs[path]
        checks += [
            Check("logits_rel_err", metrics.relative_error(r.logits, t.logits), "<", LOGITS_REL_ERR_MAX,
                  path),
            Check("logits_within_1pct", metrics.share_within(r.logits, t.logits, rtol=0.01), ">",
                  WITHIN_1PCT_MIN, path),
            Check("alignment_mismatches", segment_mismatches(r.alignment, t.alignment), "==", 0, path),
        ]
        info[path] = {
            "logits_max_abs_diff": metrics.max_abs_diff(r.logits, t.logits),
            "logits_mean_abs_diff": metrics.mean_abs_diff(r.logits, t.logits),
            "logits_within_0.1pct": metrics.share_within(r.logits, t.logits, rtol=0.001),
        }
    return Comparison(checks, info)
