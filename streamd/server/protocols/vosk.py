"""vosk-server's WebSocket protocol (alphacep/vosk-server ``websocket/asr_server.py``), on a port
of its own (``vosk_port``).

Lockstep: every client message but a config gets exactly one JSON reply, and vosk clients read
one reply after each message they send. An optional first text frame ``{"config": {...}}``
(``sample_rate``, ``words``) gets none, as upstream. Binary frames are PCM16 at the config's rate
(8000 Hz when none is given, vosk-server's default); each is answered with the oldest utterance
the engine's endpoint ended since the last reply, ``{"result": [{"conf", "start", "end",
"word"}, ...], "text": ...}``, or else the current ``{"partial": ...}``. ``{"eof" : 1}`` (any
spacing) is answered, once the engine's last final has come, with the final result (every
utterance not yet replied merged into one reply, so the count stays one), then the server
closes; ``{"reset" : 1}`` ends the current utterance and is answered with its final result, the
session going on. ``conf`` is the model's probability of the word's least likely token. vosk has
no error message: a mistake ends the session with a close code and reason, after the final
result of the audio received.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamd.engine.endpointing import EndpointingOptions
from streamd.server.protocols.base import Adapter, close_reason, dump, json_object
from streamd.server.wire import (
    Action,
    Audio,
    Closing,
    Connection,
    End,
    ErrorCode,
    Event,
    Final,
    Finalize,
    ModelInfo,
    Partial,
    ProtocolError,
    Send,
    SessionConfig,
    Start,
    Summary,
)

if TYPE_CHECKING:
    from streamd.engine.decoding import Word
    from streamd.engine.stream import Utterance

DEFAULT_RATE = 8000  # vosk-server's VOSK_SAMPLE_RATE default
EOF = {"eof": 1}
RESET = {"reset": 1}


class VoskAdapter(Adapter):
    name = "vosk"

    def __init__(self, connection: Connection, model: ModelInfo) -> None:
        super().__init__(connection, model)
        self._chunk = self.chunk_from_query()
        self._config = self._session_config(DEFAULT_RATE)
        self._words = True
        self._started = False
        self._partial = ""
        self._unreplied: list[Utterance] = []  # finals not yet in a reply, oldest first
        self._resets = 0  # resets whose final has not come yet

    def receive(self, frame: str | bytes) -> list[Action]:
        if isinstance(frame, bytes):
            if len(frame) % 2:
                raise ProtocolError(ErrorCode.BAD_AUDIO, f"{len(frame)} bytes is not a whole number of 16-bit samples")
            # The reply after the audio: a session the audio ends (max_session_s) replies in closing().
            return [*self._start(), Audio(frame), Send(self._reply())]
        message = json_object(frame, "text frame")
        if "config" in message:
            self._configure(message["config"])
            return []  # upstream sends no reply to a config
        if message == EOF:
            return [*self._start(), End()]  # replied in closing(), after the last final
        if message == RESET:
            self._resets += 1
            return [*self._start(), Finalize()]  # replied when its final comes
        raise ProtocolError(ErrorCode.BAD_MESSAGE, 'expected audio (binary), {"config": {...}}, {"eof" : 1} '
                                                   'or {"reset" : 1}')

    def _configure(self, config: Any) -> None:
        if self._started:
            raise ProtocolError(ErrorCode.BAD_CONFIG, "a config must come before audio, eof or reset")
        if not isinstance(config, dict):
            raise ProtocolError(ErrorCode.BAD_CONFIG, "config must be an object")
        rate = config.get("sample_rate", self._config.sample_rate)
        if isinstance(rate, float) and rate.is_integer():
            rate = int(rate)  # vosk-server reads it as a float
        if not isinstance(rate, int) or isinstance(rate, bool):
            raise ProtocolError(ErrorCode.BAD_CONFIG, f"sample_rate must be a whole number of Hz, not {rate!r}")
        if config.get("max_alternatives", 0):
            raise ProtocolError(ErrorCode.BAD_CONFIG, "max_alternatives is not supported: results have one text")
        self._config = self._session_config(rate)
        self._words = bool(config.get("words", self._words))

    def _session_config(self, rate: int) -> SessionConfig:
        chunk_ms, att_context_size = self._chunk
        # Utterances end at the engine's endpoint, as vosk's do at its own.
        return SessionConfig(chunk_ms, att_context_size, sample_rate=rate, encoding="pcm_s16le",
                             word_timestamps=True, partials=True, endpointing=EndpointingOptions(enabled=True))

    def _start(self) -> list[Action]:
        """The stream starts with the first message that is not a config."""
        if self._started:
            return []
        self._started = True
        return [Start(self._config)]

    def _reply(self) -> str:
        if self._unreplied:
            return self._result([self._unreplied.pop(0)])
        return dump({"partial": self._partial})

    def event(self, event: Event) -> list[str | bytes]:
        if isinstance(event, Partial):
            self._partial = event.text
        elif isinstance(event, Final):
            self._partial = ""
            self._unreplied.append(event.utterance)
            if event.reason == "finalize" and self._resets:
                self._resets -= 1
                return [self._flush()]
        return []

    def closing(self, ending: ProtocolError | None, summary: Summary) -> Closing:
        # After eof the stream's last final has come and is unreplied; after an error too when
        # audio was received (the core ends the stream first): its result goes out before the close.
        frames: list[str | bytes] = [self._flush()] if self._unreplied else []
        if ending is None:
            return Closing(frames)
        return Closing(frames, ending.code.close_code, close_reason(f"{ending.code.value}: {ending.message}"))

    def _flush(self) -> str:
        """Every unreplied utterance in one result."""
        utterances, self._unreplied = self._unreplied, []
        return self._result(utterances)

    def _result(self, utterances: list[Utterance]) -> str:
        text = " ".join(u.text for u in utterances if u.text)
        if not self._words or not text:
            return dump({"text": text})
        return dump({"result": [_word(w) for u in utterances for w in u.words], "text": text})


def _word(word: Word) -> dict[str, Any]:
    """vosk's word; ``conf`` left out where the model gave no probability."""
    confidence = {} if word.confidence is None else {"conf": word.confidence}
    return {**confidence, "start": word.start, "end": word.end, "word": word.word}
