"""Spoken digit strings: the vocabulary, random digit strings, and the text normalisation used
to score any recognizer (the digits model, Whisper) on the same terms.

The digits model's transcript is words (``"four one five oh two"``). Scoring compares digit
sequences: every transcript is normalised to digits first (``"four one five oh two"``,
``"415-02"`` and ``"Four, one, five, O, two."`` all become ``4 1 5 0 2``), so a recognizer that
writes numbers as numerals (Whisper) is not charged for its spelling.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import numpy as np

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# "oh" is how most people say 0 inside phone numbers and codes.
ZERO_AS_OH = "oh"
VOCABULARY: tuple[str, ...] = (*DIGIT_WORDS, ZERO_AS_OH)
MIN_DIGITS, MAX_DIGITS = 1, 12

# The trained model shipped inside the package (docs/models.md).
SHIPPED_MODEL = "data/digits.nemo"

_DIGIT_OF_WORD = {word: str(i) for i, word in enumerate(DIGIT_WORDS)} | {ZERO_AS_OH: "0", "o": "0"}
_TOKEN = re.compile(r"[a-z]+|[0-9]")


def random_digits(rng: np.random.Generator, min_len: int = MIN_DIGITS, max_len: int = MAX_DIGITS) -> str:
    """A random digit string (``"4150"``) of ``min_len`` to ``max_len`` digits."""
    return "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(min_len, max_len + 1))))


def spoken_words(digits: str, zero_as_oh: bool) -> list[str]:
    """The words a speaker says for ``digits``: 0 is "oh" or "zero" (one choice per string)."""
    return [ZERO_AS_OH if d == "0" and zero_as_oh else DIGIT_WORDS[int(d)] for d in digits]


def normalize(text: str) -> list[str]:
    """Any transcript -> its digits, one per item (``"Call 415, oh two."`` -> ``["call", "4",
    "1", "5", "0", "2"]``). Digit words and numerals become digits; other words stay (lower
    case) and so count as errors against a digit reference; punctuation is dropped."""
    return [_DIGIT_OF_WORD.get(token, token) for token in _TOKEN.findall(text.lower())]


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance between two word lists (substitutions + deletions + insertions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate of transcripts after :func:`normalize` (errors / reference words)."""
    pairs = [(normalize(ref), normalize(hyp)) for ref, hyp in zip(references, hypotheses, strict=True)]
    words = sum(len(ref) for ref, _ in pairs)
    if not words:
        raise ValueError("word error rate of an empty reference")
    return sum(word_errors(ref, hyp) for ref, hyp in pairs) / words


def transcript_corpus() -> list[str]:
    """Text for the digits model's tokenizer: every word alone and in pairs (one token per word)."""
    return [" ".join(VOCABULARY)] + [f"{a} {b}" for a in VOCABULARY for b in VOCABULARY]


def shipped_model_path() -> Path:
    """The digits model inside the installed package (a file in a wheel or in this checkout)."""
    return Path(str(resources.files("streamd.models").joinpath(SHIPPED_MODEL)))
