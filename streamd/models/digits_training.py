"""Training data for the spoken-digits model: digit strings spoken by many synthetic voices,
composed and augmented afresh for every example.

At the start of training a bank of utterances is synthesized (:func:`synthesize_bank`: digit
strings of 1-12 digits, a third of them single digits, grouped as people group phone numbers
with a pause at each comma, each with its own voice, speed and pitch). Every training example
then joins one to three of them with pauses (the way an answering machine speaks a number from
separate recordings), surrounds them with silence, and renders them through a random room,
phone line, background noise and level (:mod:`streamd.models.augment`). One in twenty examples
holds no speech at all. A share of the bank's utterances never appears in training: the held-out
examples are made only of those.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamd.log import get_logger
from streamd.models import augment, digits, voices
from streamd.models.training import Example, TrainingTask, train

log = get_logger(__name__)

SAMPLE_RATE = voices.SAMPLE_RATE
# Utterances per synthesizer; espeak-ng's many accents and variants are the bulk of the voices,
# piper (the one neural voice, ~0.3 s per utterance here) the most natural. Kokoro is off: 1000 of
# its utterances (run 10 in docs/models.md) cost 18 more minutes of bank and gained less on real
# speech than two seeds of the same bank differ by.
BANK_SIZES = {"espeak-ng": 8000, "flite": 2000, "festival": 1200, "piper": 400, "kokoro": 0}
HELD_OUT_SHARE = 0.05
SINGLE_DIGIT_SHARE = 0.3
ZERO_AS_OH_SHARE = 0.5
RATE = (0.75, 1.3)
PITCH = (0.6, 1.5)
SILENT_SHARE = 0.05
PIECES = ((1, 0.6), (2, 0.25), (3, 0.15))  # utterances joined in one example, and how often
PAUSE_S = (0.05, 0.8)
LEAD_S = (0.0, 0.5)
TRAIL_S = (0.0, 0.3)
LONG_SILENCE_SHARE = 0.1
LONG_SILENCE_S = (0.8, 2.5)
MAX_EXAMPLE_DIGITS = 16


def grouped_words(digit_string: str, rng: np.random.Generator) -> list[str]:
    """The words of a digit string, with "," between groups of 2-4 digits half of the time (a
    synthesizer pauses there, as people do in phone numbers)."""
    words = digits.spoken_words(digit_string, zero_as_oh=bool(rng.random() < ZERO_AS_OH_SHARE))
    if len(words) < 4 or rng.random() < 0.5:
        return words
    grouped: list[str] = []
    while words:
        size = int(rng.integers(2, 5))
        grouped += [*words[:size], ","]
        words = words[size:]
    return grouped[:-1]


def synthesize_bank(rng: np.random.Generator, sizes: dict[str, int] = BANK_SIZES) -> list[voices.Utterance]:
    """Digit strings spoken by every installed synthesizer (voices drawn at random)."""
    by_engine: dict[str, list[voices.Voice]] = {}
    for voice in voices.available_voices():
        by_engine.setdefault(voice.engine, []).append(voice)
    missing = sorted(engine for engine, count in sizes.items() if count and engine not in by_engine)
    if missing:
        log.warning("synthesizers missing: fewer voices to train on", missing=missing)
    jobs = []
    for engine, count in sizes.items():
        for _ in range(count if engine in by_engine else 0):
            voice = by_engine[engine][int(rng.integers(len(by_engine[engine])))]
            length = 1 if rng.random() < SINGLE_DIGIT_SHARE else int(rng.integers(2, digits.MAX_DIGITS + 1))
            prosody = voices.Prosody(rate=float(rng.uniform(*RATE)), pitch=float(rng.uniform(*PITCH)))
            jobs.append((voice, grouped_words(digits.random_digits(rng, length, length), rng), prosody))
    bank = voices.synthesize(jobs)
    for utterance in bank:  # half the memory (~0.7 GB for the default bank); plenty for speech
        utterance.audio = utterance.audio.astype(np.float16)
    log.info("synthesized training voices", utterances=len(bank),
             hours=round(sum(len(u.audio) for u in bank) / SAMPLE_RATE / 3600, 2),
             by_engine=dict(Counter(u.voice.engine for u in bank)), voices=len({u.voice for u in bank}))
    return bank


def _silence(rng: np.random.Generator, seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def compose(pieces: list[voices.Utterance], rng: np.random.Generator) -> Example:
    """Utterances joined with pauses and surrounded by silence, rendered through :func:`augment.augment`."""
    parts = [_silence(rng, rng.uniform(*LEAD_S))]
    for k, piece in enumerate(pieces):
        if k:
            parts.append(_silence(rng, rng.uniform(*PAUSE_S)))
        parts.append(piece.audio.astype(np.float32))
    parts.append(_silence(rng, rng.uniform(*TRAIL_S)))
    if rng.random() < LONG_SILENCE_SHARE:
        parts.insert(int(rng.integers(len(parts) + 1)), _silence(rng, rng.uniform(*LONG_SILENCE_S)))
    audio = augment.augment(np.concatenate(parts), rng)
    return audio, " ".join(word for piece in pieces for word in piece.words)


def no_speech(rng: np.random.Generator) -> Example:
    """Digital silence, or quiet noise: nothing to transcribe."""
    audio = _silence(rng, rng.uniform(0.3, 3.0))
    if rng.random() < 0.7:
        audio = augment.coloured_noise(rng, len(audio)) * float(10 ** (rng.uniform(-70, -35) / 20))
    return audio.astype(np.float32), ""


@dataclass
class DigitExamples:
    """Draws training or held-out examples from a bank of utterances."""

    bank: list[voices.Utterance]

    def __call__(self, rng: np.random.Generator, count: int) -> list[Example]:
        return [self.example(rng) for _ in range(count)]

    def example(self, rng: np.random.Generator) -> Example:
        if rng.random() < SILENT_SHARE:
            return no_speech(rng)
        wanted = int(rng.choice([n for n, _ in PIECES], p=[p for _, p in PIECES]))
        pieces = [self.bank[int(rng.integers(len(self.bank)))]]
        while len(pieces) < wanted:
            candidate = self.bank[int(rng.integers(len(self.bank)))]
            if sum(len(p.words) for p in pieces) + len(candidate.words) > MAX_EXAMPLE_DIGITS:
                break
            pieces.append(candidate)
        return compose(pieces, rng)


# The tiny architecture at 4e-3 leaves the label prior after ~400 steps; the small one at 2e-3
# and below had not within 800 (docs/models.md). ~0.4 s per step on 2 idle cores.
ARCH = "tiny"
STEPS = 1500
BATCH_SIZE = 16
LEARNING_RATE = 4e-3


def digits_task(seed: int, bank_sizes: dict[str, int] = BANK_SIZES) -> TrainingTask:
    """The digits model's training task: ``ARCH``, a bank synthesized with ``seed``."""
    bank = synthesize_bank(np.random.default_rng(seed + 7_000_001), bank_sizes)
    held = max(1, int(len(bank) * HELD_OUT_SHARE))
    order = np.random.default_rng(seed + 7_000_002).permutation(len(bank))
    return TrainingTask(
        name="digits", arch=ARCH, corpus=digits.transcript_corpus(),
        examples=DigitExamples([bank[k] for k in order[held:]]),
        held_out=DigitExamples([bank[k] for k in order[:held]]),
        evaluate_below_loss=5.0, warmup_steps=100,
    )


def train_digits_model(seed: int = 0, steps: int = STEPS, bank_sizes: dict[str, int] = BANK_SIZES) -> Any:
    """Synthesize the bank and train ``ARCH`` on spoken digits (:func:`train`).

    The weights come back as float16: saved, the model takes half the space; loading it makes
    float32 parameters again (its config builds them), holding the float16 values.
    """
    model = train(digits_task(seed, bank_sizes), seed, steps, BATCH_SIZE, LEARNING_RATE, eval_every=100,
                  eval_count=32)
    return model.half()
