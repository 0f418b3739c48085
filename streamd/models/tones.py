"""The tone alphabet: synthetic audio with a known transcript, for tests, demos and training.

Letter ``i`` of ``a``–``h`` is a sine at ``300 + 170·i`` Hz (16 kHz, amplitude about 0.3, 20 ms
fade in/out), 150–300 ms long, with random gaps of 50–300 ms before, between and after the
tones and light white noise. The transcript is the letters separated by spaces (``"a c b"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
LETTERS = "abcdefgh"
BASE_HZ = 300.0
STEP_HZ = 170.0
AMPLITUDE = 0.3
FADE_S = 0.02
NOISE_STD = 0.003


@dataclass(frozen=True)
class ToneSequence:
    """One synthesized utterance: its audio and the letters it spells."""

    audio: np.ndarray  # float32 mono at SAMPLE_RATE
    letters: str  # e.g. "acb"

    @property
    def text(self) -> str:
        return " ".join(self.letters)


def letter_frequency(letter: str) -> float:
    return BASE_HZ + STEP_HZ * LETTERS.index(letter)


def synthesize(
    letters: str,
    rng: np.random.Generator,
    tone_s: tuple[float, float] = (0.15, 0.30),
    gap_s: tuple[float, float] = (0.05, 0.30),
) -> ToneSequence:
    """Audio spelling ``letters`` with random phases, tone lengths and gaps."""
    fade = int(FADE_S * SAMPLE_RATE)
    pieces = [np.zeros(int(rng.uniform(*gap_s) * SAMPLE_RATE), np.float32)]
    for letter in letters:
        n = int(rng.uniform(*tone_s) * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        tone = AMPLITUDE * np.sin(2 * np.pi * letter_frequency(letter) * t + rng.uniform(0, 2 * np.pi))
        envelope = np.ones(n)
        envelope[:fade] = np.linspace(0.0, 1.0, fade)
        envelope[-fade:] = np.linspace(1.0, 0.0, fade)
        pieces.append((tone * envelope).astype(np.float32))
        pieces.append(np.zeros(int(rng.uniform(*gap_s) * SAMPLE_RATE), np.float32))
    audio = np.concatenate(pieces)
    audio += rng.normal(0.0, NOISE_STD, audio.shape).astype(np.float32)
    return ToneSequence(audio=audio.astype(np.float32), letters=letters)


def random_letters(rng: np.random.Generator, min_len: int = 1, max_len: int = 6) -> str:
    return "".join(rng.choice(list(LETTERS), size=int(rng.integers(min_len, max_len + 1))))


def letters_without_runs(rng: np.random.Generator, count: int) -> str:
    """``count`` letters, none next to itself. A run of one tone is the tone model's one known
    weakness (a letter doubled or dropped in ~0.3 % of runs): tests and benchmarks that assert
    whole transcripts use these, so that they measure the server, not the model."""
    letters = [str(rng.choice(list(LETTERS)))]
    while len(letters) < count:
        letters.append(str(rng.choice([x for x in LETTERS if x != letters[-1]])))
    return "".join(letters)


def random_sequence(rng: np.random.Generator, min_len: int = 1, max_len: int = 6) -> ToneSequence:
    return synthesize(random_letters(rng, min_len, max_len), rng)


def random_audio(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Random tone sequences back to back, cut to ``seconds``: audio with real-looking energy and
    token activity for any model (the benchmarks' audio)."""
    pieces, total = [], 0
    while total < seconds * SAMPLE_RATE:
        pieces.append(random_sequence(rng).audio)
        total += len(pieces[-1])
    return np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]


def transcript_corpus() -> list[str]:
    """Text for the tone model's tokenizer: every letter alone and in pairs."""
    return [" ".join(LETTERS)] + [f"{a} {b}" for a in LETTERS for b in LETTERS]
