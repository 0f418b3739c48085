"""sherpa-onnx's streaming WebSocket protocol (k2-fsa/sherpa-onnx
``csrc/online-websocket-server-impl.cc``), on a port of its own (``sherpa_port``).

No config message: the stream starts on connect. Binary frames are float32 samples at 16 kHz;
the text frame ``Done`` ends the audio. Results are the C++ server's JSON,
``{"text", "tokens", "timestamps", "ys_probs", "lm_probs", "context_scores", "segment", "words",
"start_time", "is_final", "is_eof"}``, one whenever the current segment's text changes (the
engine's partials) and one when it ends (``is_final``: the engine's endpoint, or the end of the
audio with ``is_eof`` too); ``segment`` counts utterances and ``text`` is the current one's. A
segment's final result lists its words as ``tokens``, their start times (from ``start_time``)
as ``timestamps`` and the log of their probabilities (the model's, of each word's least likely
token) as ``ys_probs``; interim results leave the three empty. After the last result comes the
text frame ``Done!``. sherpa-onnx has no error message: a mistake ends the session with a close
code and reason, after the final result of the audio received.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from streamd.engine.endpointing import EndpointingOptions
from streamd.server.protocols.base import Adapter, close_reason, dump
from streamd.server.wire import (
    Action,
    Audio,
    Closing,
    Connection,
    End,
    ErrorCode,
    Event,
    Final,
    ModelInfo,
    Partial,
    ProtocolError,
    SessionConfig,
    Start,
    Started,
    Summary,
)

if TYPE_CHECKING:
    from streamd.engine.decoding import Word

SAMPLE_RATE = 16000
DONE = "Done"
DONE_REPLY = "Done!"
# The engine's reasons for ending an utterance mid-stream; any other final is the stream's last.
MID_STREAM_REASONS = ("endpoint", "finalize")


class SherpaAdapter(Adapter):
    name = "sherpa"

    def __init__(self, connection: Connection, model: ModelInfo) -> None:
        super().__init__(connection, model)
        self._segment_start = 0.0

    def opening(self) -> list[Action]:
        chunk_ms, att_context_size = self.chunk_from_query()
        # sherpa-onnx's server ends segments at its endpoint by default; streamd's engine does so here.
        return [Start(SessionConfig(chunk_ms, att_context_size, sample_rate=SAMPLE_RATE, encoding="f32le",
                                    word_timestamps=True, partials=True,
                                    endpointing=EndpointingOptions(enabled=True)))]

    def receive(self, frame: str | bytes) -> list[Action]:
        if isinstance(frame, bytes):
            return [Audio(frame)]
        if frame == DONE:
            return [End()]
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"expected float32 audio (binary) or the text {DONE!r}")

    def event(self, event: Event) -> list[str | bytes]:
        if isinstance(event, Started):
            return []
        if isinstance(event, Partial):
            return [self._result(event.text, event.utterance, self._segment_start, [], is_final=False, is_eof=False)]
        assert isinstance(event, Final)
        utterance = event.utterance
        self._segment_start = utterance.end  # the next segment's
        return [self._result(utterance.text, utterance.index, utterance.start, utterance.words, is_final=True,
                             is_eof=event.reason not in MID_STREAM_REASONS)]

    def closing(self, ending: ProtocolError | None, summary: Summary) -> Closing:
        if ending is None:
            return Closing([DONE_REPLY])
        # A stream the server shuts down ends as after Done (its final result went out).
        frames: list[str | bytes] = [DONE_REPLY] if ending.code is ErrorCode.SHUTTING_DOWN else []
        return Closing(frames, ending.code.close_code, close_reason(f"{ending.code.value}: {ending.message}"))

    def _result(self, text: str, segment: int, start: float, words: list[Word], *, is_final: bool,
                is_eof: bool) -> str:
        confidences = [w.confidence for w in words]
        return dump({
            "text": text, "tokens": [w.word for w in words], "timestamps": [round(w.start - start, 2) for w in words],
            # one per token, or none where the model gave no probability
            "ys_probs": [] if None in confidences else [round(math.log(max(c, 1e-12)), 6) for c in confidences],
            "lm_probs": [], "context_scores": [], "segment": segment, "words": [], "start_time": round(start, 2),
            "is_final": is_final, "is_eof": is_eof,
        })
