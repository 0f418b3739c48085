"""Batch transcription of files with an RNNT model, offline or through the streaming engine."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from streamd.engine.engine import StreamingEngine
from streamd.engine.offline import Transcript, transcribe_offline
from streamd.engine.stream import StreamOptions

# Streaming mode feeds files to the engine in pieces of this size, like a live client would.
FEED_SECONDS = 0.1


def transcribe_streaming(engine: StreamingEngine, audios: list[np.ndarray], options: StreamOptions
                         ) -> list[Transcript]:
    """Run utterances through the streaming engine as concurrent streams (batched together).

    Finals of all utterances of a stream (when endpointing splits it) are joined.
    """
    ids = [engine.open_stream(options) for _ in audios]
    feed = int(FEED_SECONDS * engine.sample_rate)
    for stream_id, audio in zip(ids, audios):
        for start in range(0, len(audio), feed):
            engine.push_audio(stream_id, audio[start : start + feed])
        engine.end_stream(stream_id)
    finals: dict[int, list[Any]] = {i: [] for i in ids}
    while any(i in engine.streams for i in ids):
        for update in engine.step():
            if update.stream_id in finals:
                finals[update.stream_id].extend(update.finals)
    results = []
    for stream_id in ids:
        utterances = finals[stream_id]
        tokens = [t for u in utterances for t in u.tokens]
        words = [w for u in utterances for w in u.words]
        text = " ".join(u.text for u in utterances if u.text)
        results.append(Transcript(text, tokens, [], words))
    return results


def transcribe(model: Any, audios: list[np.ndarray], mode: str, options: StreamOptions,
               max_batch: int = 32) -> tuple[list[Transcript], float]:
    """Transcribe in ``offline`` or ``streaming`` mode; return transcripts and compute seconds."""
    started = time.perf_counter()
    if mode == "offline":
        results = transcribe_offline(model, audios, options.att_context_size, options.word_timestamps)
    elif mode == "streaming":
        # Cache slots are preallocated per engine: bound them by the batch, feed files in waves.
        engine = StreamingEngine(model, max_batch=max_batch, max_streams=max(min(len(audios), max_batch), 1))
        results = []
        for first in range(0, len(audios), max_batch):
            results += transcribe_streaming(engine, audios[first : first + max_batch], options)
    else:
        raise ValueError(f"mode must be offline or streaming, not {mode!r}")
    return results, time.perf_counter() - started
