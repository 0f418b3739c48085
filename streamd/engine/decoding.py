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

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:  # see streamd.engine.stream.StreamUpdate.__reduce__
        return Word, (self.word, self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokens_to_text(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.ids_to_text(list(ids)).strip() if ids else ""


def tokens_to_words(tokenizer: Any, ids: list[int], frames: list[int], frame_s: float) -> list[Word]:
    """Group pieces into words at SentencePiece word starts.

    A word spans from its first token's frame to the end of its last token's frame: the
    transducer emits a token at one encoder frame, so times have that frame's resolution.
    """
    groups: list[tuple[list[int], int, int]] = []
    for token, frame in zip(ids, frames):
        piece = tokenizer.ids_to_tokens([token])[0]
        if piece.startswith(WORD_START) or not groups:
            groups.append(([token], frame, frame))
        else:
            groups[-1][0].append(token)
            groups[-1] = (groups[-1][0], groups[-1][1], frame)
    words = []
    for tokens, first, last in groups:
        text = tokenizer.ids_to_text(tokens).strip()
        if text:
            words.append(Word(text, round(first * frame_s, 3), round((last + 1) * frame_s, 3)))
    return words
