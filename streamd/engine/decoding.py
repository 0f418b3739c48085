"""From RNNT token ids and their frame indices to text and timed words."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

WORD_START = "▁"  # SentencePiece's word-boundary marker


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from stream start
    end: float
    confidence: float | None = None  # the lowest probability the model gave one of its tokens

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:  # see streamd.engine.stream.StreamUpdate.__reduce__
        return Word, (self.word, self.start, self.end, self.confidence)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.confidence is None:
            del data["confidence"]
        return data


def tokens_to_text(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.ids_to_text(list(ids)).strip() if ids else ""


def tokens_to_words(tokenizer: Any, ids: list[int], frames: list[int], frame_s: float,
                    probabilities: list[float] | None = None) -> list[Word]:
    """Group pieces into words at SentencePiece word starts.

    A word spans from its first token's frame to the end of its last token's frame: the
    transducer emits a token at one encoder frame, so times have that frame's resolution.
    With the tokens' ``probabilities``, a word's confidence is its least likely token's (NeMo's
    default word aggregation, ``min``).
    """
    groups: list[tuple[list[int], int, int, list[float]]] = []
    for i, (token, frame) in enumerate(zip(ids, frames)):
        piece = tokenizer.ids_to_tokens([token])[0]
        probability = [probabilities[i]] if probabilities is not None else []
        if piece.startswith(WORD_START) or not groups:
            groups.append(([token], frame, frame, probability))
        else:
            tokens, first, _, seen = groups[-1]
            groups[-1] = ([*tokens, token], first, frame, seen + probability)
    words = []
    for tokens, first, last, seen in groups:
        text = tokenizer.ids_to_text(tokens).strip()
        if text:
            words.append(Word(text, round(first * frame_s, 3), round((last + 1) * frame_s, 3),
                              round(min(seen), 4) if seen else None))
    return words
