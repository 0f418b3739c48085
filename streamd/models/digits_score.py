"""Score recognizers on spoken digits: word error rate after :func:`digits.normalize` and speed.

The digits model is scored through the streaming engine (the path the server uses) and, for
the same clips, offline, so a score also says whether streaming still equals offline. Whisper
is scored on the same clips through the same normalisation (it writes digits as numerals).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from streamd.models import digits
from streamd.models.real_speech import Clip


@dataclass
class Score:
    """How one recognizer did on a list of clips."""

    recognizer: str
    words: int
    errors: int
    audio_seconds: float
    compute_seconds: float
    # (clip name, reference, hypothesis) for every clip
    transcripts: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def word_error_rate(self) -> float:
        return self.errors / self.words

    @property
    def rtfx(self) -> float:
        """Seconds of audio transcribed per second of compute."""
        return self.audio_seconds / self.compute_seconds if self.compute_seconds else float("inf")

    def mistakes(self) -> list[tuple[str, str, str]]:
        return [(name, ref, hyp) for name, ref, hyp in self.transcripts
                if digits.normalize(ref) != digits.normalize(hyp)]

    def summary(self) -> dict[str, Any]:
        return {"recognizer": self.recognizer, "words": self.words, "errors": self.errors,
                "word_error_rate": round(self.word_error_rate, 4), "audio_seconds": round(self.audio_seconds, 2),
                "compute_seconds": round(self.compute_seconds, 3), "rtfx": round(self.rtfx, 1),
                "mistakes": self.mistakes()}


def _score(recognizer: str, clips: list[Clip], hypotheses: list[str], compute_seconds: float) -> Score:
    pairs = [(digits.normalize(c.transcript), digits.normalize(h)) for c, h in zip(clips, hypotheses, strict=True)]
    return Score(recognizer, words=sum(len(ref) for ref, _ in pairs),
                 errors=sum(digits.word_errors(ref, hyp) for ref, hyp in pairs),
                 audio_seconds=sum(c.seconds for c in clips), compute_seconds=compute_seconds,
                 transcripts=[(c.name, c.transcript, h) for c, h in zip(clips, hypotheses)])


@dataclass
class StreamingScore:
    """The digits model through the streaming engine, and whether offline gave the same tokens."""

    score: Score
    offline_differs: list[str]  # names of clips whose offline tokens differ from streaming's


def score_streaming(model: Any, clips: list[Clip], att_context_size: tuple[int, int],
                    concurrent: bool = True) -> StreamingScore:
    """Transcribe ``clips`` through the streaming engine at one chunk size.

    ``concurrent``: all clips as simultaneous streams, batched (fast); otherwise one stream at a
    time (what one live client costs: the RTFx quoted in the docs).
    """
    from streamd.engine.engine import StreamingEngine
    from streamd.engine.offline import transcribe_offline
    from streamd.engine.stream import StreamOptions
    from streamd.transcribe import transcribe_streaming

    options = StreamOptions(att_context_size=att_context_size)
    batches = [clips] if concurrent else [[clip] for clip in clips]
    results, compute = [], 0.0
    for batch in batches:
        engine = StreamingEngine(model, max_batch=len(batch), max_streams=len(batch))
        began = time.perf_counter()
        results += transcribe_streaming(engine, [c.audio for c in batch], options)
        compute += time.perf_counter() - began
    offline = transcribe_offline(model, [c.audio for c in clips], att_context_size)
    chunk_ms = (att_context_size[1] + 1) * 80
    score = _score(f"digits model, streaming {chunk_ms} ms", clips, [r.text for r in results], compute)
    differs = [c.name for c, s, o in zip(clips, results, offline) if s.tokens != o.tokens]
    return StreamingScore(score, differs)


def score_whisper(model_dir: str, clips: list[Clip], batch_size: int = 1) -> Score:
    """Whisper (a transformers directory) on ``clips``, greedy, ``batch_size`` clips per call."""
    from streamd.offline.whisper import WhisperRunner

    runner = WhisperRunner(model_dir)
    hypotheses, compute = [], 0.0
    for start in range(0, len(clips), batch_size):
        batch = [c.audio for c in clips[start:start + batch_size]]
        began = time.perf_counter()
        decoded = runner.generate(runner.features(batch))
        compute += time.perf_counter() - began
        hypotheses += [runner.text(tokens) for tokens in decoded.tokens]
    return _score(f"whisper {model_dir.rstrip('/').rsplit('/', 1)[-1]}", clips, hypotheses, compute)

