"""End-of-utterance detection from the transducer's own output.

An utterance ends after ``silence_ms`` without a new token following at least one token:
the same trailing-blank rule as sherpa-onnx's endpointer and NeMo's ``RNNTGreedyEndpointing``
(``stop_history_eou``). Kept separate from decoding so other rules can replace it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EndpointingOptions:
    enabled: bool = False
    silence_ms: int = 800

    def __post_init__(self) -> None:
        if not 80 <= self.silence_ms <= 60_000:
            raise ValueError("endpointing.silence_ms must be between 80 and 60000")


def utterance_ended(options: EndpointingOptions, last_token_frame: int | None, frames_done: int,
                    frame_ms: float) -> bool:
    """True when the utterance has speech and ``silence_ms`` of blank frames followed it."""
    if not options.enabled or last_token_frame is None:
        return False
    return (frames_done - 1 - last_token_frame) * frame_ms >= options.silence_ms
