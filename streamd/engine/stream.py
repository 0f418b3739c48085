"""Per-stream state: audio/feature buffers, decoded tokens, and utterance bookkeeping (the decoder's
state lives batched in :class:`streamd.engine.decoder_states.DecoderStates`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from streamd.engine.decoding import Word
from streamd.engine.endpointing import EndpointingOptions
from streamd.engine.features import FeatureState


@dataclass(frozen=True)
class StreamOptions:
    """What a client chooses per stream."""

    att_context_size: tuple[int, int] = (70, 13)
    word_timestamps: bool = True
    endpointing: EndpointingOptions = field(default_factory=EndpointingOptions)


@dataclass
class Utterance:
    """A finished piece of transcript (one ``final`` message)."""

    index: int
    text: str
    tokens: list[int]
    words: list[Word]
    start: float
    end: float
    reason: str
    probabilities: list[float] = field(default_factory=list)  # of each token, as the model gave it

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:  # see StreamUpdate.__reduce__
        return Utterance, (self.index, self.text, self.tokens, self.words, self.start, self.end, self.reason,
                           self.probabilities)

    @property
    def confidence(self) -> float:
        """The mean of its words' confidences (0 without words)."""
        known = [w.confidence for w in self.words if w.confidence is not None]
        return round(sum(known) / len(known), 4) if known else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["words"] = [w.to_dict() for w in self.words]
        return data


@dataclass
class StreamUpdate:
    """What one engine step changed for one stream."""

    stream_id: int
    partial: str | None = None  # whole current-utterance text, when it changed
    partial_tokens: list[int] = field(default_factory=list)
    partial_probabilities: list[float] = field(default_factory=list)  # of each partial token
    finals: list[Utterance] = field(default_factory=list)
    finished: bool = False
    audio_seconds: float = 0.0
    processed_seconds: float = 0.0  # the audio the encoder has consumed (its frames' span)
    failure: str | None = None  # the step failed for this stream alone (a bug): it is gone

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # Positional fields, not the default state dict: an engine process sends hundreds of
        # updates per step across its pipe; with Utterance's and Word's, a fifth less time
        # (400 updates: 1.1 -> 0.9 ms to pickle and load, docs/benchmarks.md).
        return StreamUpdate, (self.stream_id, self.partial, self.partial_tokens, self.partial_probabilities,
                              self.finals, self.finished, self.audio_seconds, self.processed_seconds, self.failure)


@dataclass(eq=False)  # identity, not field-by-field tensor comparison
class Stream:
    """Everything the engine knows about one live stream."""

    stream_id: int
    options: StreamOptions
    n_mels: int
    features: FeatureState = field(default_factory=FeatureState)
    # Mel frames not yet fed to the encoder: views [n_mels, T_i] of the featurizer's batch outputs,
    # kept as pieces so that appending costs no copy (the step copies them once, all streams together).
    pending: list[torch.Tensor] = field(default_factory=list)
    pending_count: int = 0
    history: torch.Tensor | None = None  # last frames already fed (pre-encode cache) [n_mels, <=9]
    encoder_frames: int = 0  # encoder frames decoded so far
    steps: int = 0
    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)  # of each token
    utterance_first_token: int = 0
    utterance_index: int = 0
    utterance_start: float = 0.0
    last_partial: str = ""
    partial_tokens: int = 0  # the current utterance's tokens that last_partial was made from
    eof: bool = False
    features_final: bool = False
    finalize_requested: bool = False
    finished: bool = False
    waiting_since: float = 0.0

    @property
    def right_context(self) -> int:
        return self.options.att_context_size[1]

    def pending_frames(self) -> int:
        return self.pending_count

    def append_frames(self, frames: torch.Tensor) -> None:
        if frames.shape[1]:
            self.pending.append(frames)
            self.pending_count += int(frames.shape[1])

    def peek_frames(self, count: int) -> list[torch.Tensor]:
        """The next ``count`` pending frames, as views (no copy); they stay pending until
        :meth:`drop_frames` (a failed model call leaves the stream as it was)."""
        peeked: list[torch.Tensor] = []
        for piece in self.pending:
            if count <= 0:
                break
            width = min(int(piece.shape[1]), count)
            peeked.append(piece if width == piece.shape[1] else piece[:, :width])
            count -= width
        return peeked

    def drop_frames(self, count: int) -> None:
        """Remove the next ``count`` pending frames (the encoder has consumed them)."""
        self.pending_count -= count
        while count > 0:
            width = int(self.pending[0].shape[1])
            if width <= count:
                self.pending.pop(0)
            else:
                self.pending[0] = self.pending[0][:, count:]
                width = count
            count -= width
