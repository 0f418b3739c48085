"""WhisperLive's WebSocket protocol (collabora/WhisperLive), on a port of its own (``whisperlive_port``).

The client's first text frame carries its options (``uid``, ``language``, ``task``, ``model``,
``use_vad``, ``send_last_n_segments``, ``audio_format``, ...); the stream starts then and
``SERVER_READY`` answers, naming the backend ``faster_whisper``, the one whose completed
segments WhisperLive's client keeps. Binary frames are audio, float32 at 16 kHz (int16 when the
options say ``audio_format: int16``); the binary frame ``END_OF_AUDIO`` ends it. Every message
carries the client's ``uid``. Each partial and each final sends ``segments``: the last
``send_last_n_segments`` completed segments (the engine's finals, ``completed`` true) and, while
an utterance is spoken, its text so far (``completed`` false), with ``start``/``end`` as strings of
seconds. After ``END_OF_AUDIO`` the last segments go out and the server closes. A full server
answers ``{"status": "WAIT"}`` over the WebSocket (:attr:`answers_full`), a client's mistake
``{"status": "ERROR"}``, and the session length limit ``DISCONNECT``, as WhisperLive's own
server does.
"""

from __future__ import annotations

from typing import Any

from streamd.engine.endpointing import EndpointingOptions
from streamd.server.protocols.base import Adapter, dump, json_object
from streamd.server.wire import (
    CLOSE_NORMAL,
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

END_OF_AUDIO = b"END_OF_AUDIO"
# WhisperLive's client keeps completed segments only from this backend.
BACKEND = "faster_whisper"
AUDIO_FORMATS = {"float32": "f32le", "int16": "pcm_s16le"}
SAMPLE_RATE = 16000
DEFAULT_LAST_SEGMENTS = 10


class WhisperLiveAdapter(Adapter):
    name = "whisperlive"
    answers_full = True

    def __init__(self, connection: Connection, model: ModelInfo) -> None:
        super().__init__(connection, model)
        self._uid: str | None = None  # from the options; None until they came
        self._last_segments = DEFAULT_LAST_SEGMENTS
        self._words = False
        self._completed: list[dict[str, Any]] = []
        self._utterance_start = 0.0  # where the utterance being spoken began

    def receive(self, frame: str | bytes) -> list[Action]:
        if self._uid is None:
            return [Start(self._options(frame))]
        if isinstance(frame, str):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "after the options, send audio and END_OF_AUDIO as binary "
                                                       "frames")
        if frame == END_OF_AUDIO:
            return [End()]
        return [Audio(frame)]

    def _options(self, frame: str | bytes) -> SessionConfig:
        if isinstance(frame, bytes):
            raise ProtocolError(ErrorCode.AUDIO_BEFORE_CONFIG, "send the options (a JSON text frame with uid) "
                                                               "before audio")
        options = json_object(frame, "options")
        uid = options.get("uid")
        if not isinstance(uid, str):
            raise ProtocolError(ErrorCode.BAD_CONFIG, "the options need a uid string")
        self._uid = uid  # echoed from now on, errors included
        audio_format = options.get("audio_format", "float32")
        if audio_format not in AUDIO_FORMATS:
            raise ProtocolError(ErrorCode.BAD_CONFIG, f"audio_format {audio_format!r} is not supported: use "
                                                      f"{' or '.join(AUDIO_FORMATS)}")
        if options.get("task", "transcribe") not in ("transcribe", None) or options.get("enable_translation"):
            raise ProtocolError(ErrorCode.BAD_CONFIG, "streamd transcribes; translation is not supported")
        last = options.get("send_last_n_segments", DEFAULT_LAST_SEGMENTS)
        if not isinstance(last, int) or isinstance(last, bool) or last < 1:
            raise ProtocolError(ErrorCode.BAD_CONFIG, f"send_last_n_segments must be a positive integer, not {last!r}")
        self._last_segments = last
        self._words = bool(options.get("word_timestamps", False))
        chunk_ms, att_context_size = self.chunk_from_query()
        # Segments complete at the engine's endpoint: it is always on.
        return SessionConfig(chunk_ms, att_context_size, sample_rate=SAMPLE_RATE, encoding=AUDIO_FORMATS[audio_format],
                             word_timestamps=True, partials=True, endpointing=EndpointingOptions(enabled=True))

    def event(self, event: Event) -> list[str | bytes]:
        if isinstance(event, Started):
            return [self._message(message="SERVER_READY", backend=BACKEND)]
        if isinstance(event, Partial):
            speaking = _segment(self._utterance_start, event.audio_seconds, event.text, completed=False)
            return [self._segments([speaking])]
        assert isinstance(event, Final)
        utterance = event.utterance
        self._utterance_start = utterance.end
        if not utterance.text:
            return []  # nothing was said: no segment
        segment = _segment(utterance.start, utterance.end, utterance.text, completed=True)
        if self._words:
            segment["words"] = [{"word": w.word, "start": w.start, "end": w.end}
                                | ({} if w.confidence is None else {"probability": w.confidence})
                                for w in utterance.words]
        self._completed.append(segment)
        return [self._segments([])]

    def closing(self, ending: ProtocolError | None, summary: Summary) -> Closing:
        if ending is None:
            return Closing([])
        if ending.code is ErrorCode.MAX_SESSION:  # WhisperLive's own limit on a connection's time
            return Closing([self._message(message="DISCONNECT")])
        return Closing([self._message(status="ERROR", message=ending.message)], ending.code.close_code,
                       ending.code.value)

    def full(self, first_frame: str | bytes, retry_after_s: float) -> Closing:
        """``WAIT`` with the minutes to wait; the client reads its own uid from the reply."""
        try:
            uid = json_object(first_frame, "options").get("uid")
        except ProtocolError:
            uid = None
        return Closing([dump({"uid": uid, "status": "WAIT", "message": retry_after_s / 60})], CLOSE_NORMAL)

    def _segments(self, speaking: list[dict[str, Any]]) -> str:
        return self._message(segments=self._completed[-self._last_segments:] + speaking)

    def _message(self, **fields: Any) -> str:
        return dump({"uid": self._uid, **fields})


def _segment(start: float, end: float, text: str, *, completed: bool) -> dict[str, Any]:
    """A segment as WhisperLive's server formats it: times as strings of seconds, 3 decimals."""
    return {"start": f"{start:.3f}", "end": f"{end:.3f}", "text": text, "completed": completed}
