"""OpenAI's Realtime API, transcription sessions (``/v1/realtime?intent=transcription``).

GA shapes (``session.update`` with ``session.type: transcription``) and beta shapes (header
``OpenAI-Beta: realtime=v1``, ``transcription_session.update``) both work; the server answers in
the shape the client uses. Audio is base64 PCM16 (24 kHz unless the session says another rate),
resampled on the server. Each utterance is one conversation item: its text streams as
``...transcription.delta`` events from the engine's partials, and ``...transcription.completed``
carries the whole transcript, which the deltas always concatenate to exactly. An item ends at
``input_audio_buffer.commit`` (the stream ends there: every appended sample is decoded into the
item, and the next append starts a fresh stream, as OpenAI transcribes each committed buffer on
its own) or, with ``server_vad`` turn detection (the default), at the engine's endpoint,
announced by ``speech_started`` / ``speech_stopped`` / ``committed``.

Like OpenAI's server, a client's mistake (unknown event, bad JSON, bad base64) is answered with an
``error`` event and the session goes on; only the server's limits end it. What OpenAI offers and
streamd does not (G.711 formats, noise reduction, prompts, another model) is refused or ignored
as docs/protocols.md lists.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
from typing import Any

from streamd.engine.endpointing import EndpointingOptions
from streamd.server.protocols.base import Adapter, dump, json_object
from streamd.server.wire import (
    Action,
    Audio,
    Closing,
    Connection,
    EndStream,
    ErrorCode,
    Event,
    Final,
    ModelInfo,
    Partial,
    ProtocolError,
    Send,
    SessionConfig,
    Start,
    Started,
    Summary,
)

DEFAULT_RATE = 24000
LOGPROBS = "item.input_audio_transcription.logprobs"
DEFAULT_TURN_DETECTION: dict[str, Any] = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                          "silence_duration_ms": 500}


class OpenAIRealtimeAdapter(Adapter):
    name = "openai"

    def __init__(self, connection: Connection, model: ModelInfo) -> None:
        super().__init__(connection, model)
        self.beta = connection.headers.get("openai-beta", "").startswith("realtime=")
        self._event_ids = itertools.count(1)
        self._item_ids = itertools.count(1)
        self._rate = DEFAULT_RATE
        self._turn_detection: dict[str, Any] | None = dict(DEFAULT_TURN_DETECTION)
        self._transcription: dict[str, Any] = {"model": connection.param("model") or model.name, "language": "en"}
        self._include: list[str] = []
        self._chunk = self.chunk_from_query()
        self._started = False
        self._uncommitted_audio = False  # audio appended since the last commit
        self._items: dict[int, str] = {}  # utterance -> item id
        self._sent: dict[int, str] = {}  # utterance -> text sent as deltas so far
        self._speaking: set[int] = set()  # utterances whose speech_started went out
        self._cleared: set[int] = set()  # utterances the client cleared: their transcript is dropped
        self._next_utterance = 0  # the first utterance whose final has not come yet
        self._previous_item: str | None = None
        self._committed: set[str] = set()  # items whose committed event went out

    # ------------------------------------------------------------------ client -> core
    def opening(self) -> list[Action]:
        kind = "transcription_session.created" if self.beta else "session.created"
        return [Send(self._event(kind, session=self._session()))]

    def receive(self, frame: str | bytes) -> list[Action]:
        if isinstance(frame, bytes):
            return self._error("invalid_request_error", "binary_frame", "send JSON events as text frames")
        try:
            message = json_object(frame, "event")
        except ProtocolError as exc:
            return self._error("invalid_request_error", "invalid_json", exc.message)
        kind = message.get("type")
        client_event = message.get("event_id") if isinstance(message.get("event_id"), str) else None
        try:
            if kind in ("session.update", "transcription_session.update"):
                return self._update(kind, message.get("session"))
            if kind == "input_audio_buffer.append":
                return self._append(message.get("audio"))
            if kind == "input_audio_buffer.commit":
                return self._commit()
            if kind == "input_audio_buffer.clear":
                return self._clear()
        except _ClientMistake as mistake:
            return self._error("invalid_request_error", mistake.code, str(mistake), client_event, mistake.param)
        return self._error("invalid_request_error", "unknown_event",
                           f"event type {kind!r} is not supported by a transcription session", client_event)

    def _update(self, kind: str, session: Any) -> list[Action]:
        if not isinstance(session, dict):
            raise _ClientMistake("invalid_value", "session must be an object", "session")
        if kind == "session.update":
            if session.get("type", "transcription") != "transcription":
                raise _ClientMistake("invalid_value", "streamd serves transcription sessions only "
                                     "(connect with ?intent=transcription)", "session.type")
            audio_input = (session.get("audio") or {}).get("input") or {}
            rate = self._rate
            if "format" in audio_input:
                rate = _ga_rate(audio_input["format"])
            turn_detection = audio_input.get("turn_detection", self._turn_detection)
            transcription = audio_input.get("transcription")
        else:
            if session.get("input_audio_format", "pcm16") != "pcm16":
                raise _ClientMistake("invalid_value", "input_audio_format must be pcm16 (G.711 is not supported)",
                                     "session.input_audio_format")
            rate = DEFAULT_RATE
            turn_detection = session.get("turn_detection", self._turn_detection)
            transcription = session.get("input_audio_transcription")
        _check_turn_detection(turn_detection)
        if self._started and (rate != self._rate or turn_detection != self._turn_detection):
            raise _ClientMistake("session_already_streaming", "the audio format and turn detection are fixed "
                                 "once audio has been appended; open a new session to change them", "session")
        self._rate, self._turn_detection = rate, turn_detection
        if isinstance(transcription, dict):
            self._transcription = {**self._transcription, **transcription}  # the model name is echoed, not used
        if isinstance(session.get("include"), list):
            self._include = [str(item) for item in session["include"]]
        self.beta = kind == "transcription_session.update"
        updated = "transcription_session.updated" if self.beta else "session.updated"
        return [Send(self._event(updated, session=self._session()))]

    def _append(self, audio: Any) -> list[Action]:
        if not isinstance(audio, str):
            raise _ClientMistake("invalid_value", "audio must be a base64 string", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _ClientMistake("invalid_value", "audio is not valid base64", "audio") from None
        if len(data) % 2:
            raise _ClientMistake("invalid_value", "audio must be whole 16-bit samples (an even number of bytes)",
                                 "audio")
        actions: list[Action] = []
        if not self._started:
            self._started = True
            actions.append(Start(self._config()))
        self._uncommitted_audio = self._uncommitted_audio or bool(data)
        return [*actions, Audio(data)]

    def _commit(self) -> list[Action]:
        if not self._uncommitted_audio:
            raise _ClientMistake("input_audio_buffer_commit_empty", "the input audio buffer holds no audio "
                                 "since the last commit")
        self._uncommitted_audio = False
        self._started = False  # the next append starts the next item's stream
        return [*[Send(frame) for frame in self._committed_item(self._item(self._next_utterance))], EndStream()]

    def _clear(self) -> list[Action]:
        actions: list[Action] = [Send(self._event("input_audio_buffer.cleared"))]
        if self._uncommitted_audio:
            # The engine has heard the audio already: end its stream and drop the transcript.
            self._uncommitted_audio = False
            self._started = False
            self._cleared.add(self._next_utterance)
            actions.append(EndStream())
        return actions

    # ------------------------------------------------------------------ core -> client
    def event(self, event: Event) -> list[str | bytes]:
        if isinstance(event, Started):
            return []
        if isinstance(event, Partial):
            if event.utterance in self._cleared:
                return []
            item = self._item(event.utterance)
            frames = []
            if self._turn_detection is not None and event.utterance not in self._speaking:
                self._speaking.add(event.utterance)
                frames.append(self._event("input_audio_buffer.speech_started", item_id=item,
                                          audio_start_ms=round(1000 * event.audio_seconds)))
            return frames + self._delta(event.utterance, event.text)
        assert isinstance(event, Final)
        return self._final(event)

    def _final(self, event: Final) -> list[str | bytes]:
        utterance = event.utterance
        index = utterance.index
        self._next_utterance = index + 1
        if index in self._cleared:
            return []
        if not utterance.text and index not in self._items:
            return []  # nothing was said and nothing was committed: no item
        item = self._item(index)
        frames: list[str | bytes] = self._delta(index, utterance.text)
        if index in self._speaking and event.reason == "endpoint":  # the engine heard the speech end
            frames.append(self._event("input_audio_buffer.speech_stopped", item_id=item,
                                      audio_end_ms=round(1000 * utterance.end)))
        frames += self._committed_item(item)
        completed: dict[str, Any] = {
            "item_id": item, "content_index": 0, "transcript": utterance.text,
            "usage": {"type": "duration", "seconds": round(utterance.end - utterance.start, 3)},
        }
        if LOGPROBS in self._include:
            completed["logprobs"] = _word_logprobs(utterance.words)
        frames.append(self._event("conversation.item.input_audio_transcription.completed", **completed))
        if not self.beta:
            frames.append(self._event("conversation.item.done", item=_item(item, utterance.text),
                                      previous_item_id=self._previous_item))
        self._previous_item = item
        return frames

    def _delta(self, utterance: int, text: str) -> list[str | bytes]:
        """The text not yet sent for ``utterance``. A partial only grows within an utterance
        (tokens are appended and SentencePiece text concatenates), so the deltas add up to it."""
        sent = self._sent.get(utterance, "")
        if text == sent or not text.startswith(sent):
            return []
        self._sent[utterance] = text
        return [self._event("conversation.item.input_audio_transcription.delta", item_id=self._item(utterance),
                            content_index=0, delta=text[len(sent):])]

    def closing(self, ending: ProtocolError | None, summary: Summary) -> Closing:
        if ending is None:
            return Closing([])
        kind = "server_error" if ending.code is ErrorCode.INTERNAL_ERROR else "invalid_request_error"
        return Closing([self._error_event(kind, ending.code.value, ending.message)],
                       ending.code.close_code, ending.code.value)

    # ------------------------------------------------------------------ building
    def _config(self) -> SessionConfig:
        chunk_ms, att_context_size = self._chunk
        td = self._turn_detection
        endpointing = EndpointingOptions(
            enabled=td is not None,
            silence_ms=int(td.get("silence_duration_ms", 500)) if td is not None else EndpointingOptions().silence_ms)
        return SessionConfig(chunk_ms, att_context_size, sample_rate=self._rate, encoding="pcm_s16le",
                             endpointing=endpointing)

    def _item(self, utterance: int) -> str:
        if utterance not in self._items:
            self._items[utterance] = f"item_{self.connection.session_id}_{next(self._item_ids)}"
        return self._items[utterance]

    def _committed_item(self, item: str) -> list[str]:
        """``committed`` and the item's creation, once per item (by commit or by the engine's end)."""
        if item in self._committed:
            return []
        self._committed.add(item)
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        return [self._event("input_audio_buffer.committed", item_id=item, previous_item_id=self._previous_item),
                self._event(added, item=_item(item, None), previous_item_id=self._previous_item)]

    def _session(self) -> dict[str, Any]:
        session_id = f"sess_{self.connection.session_id}"
        if self.beta:
            return {"id": session_id, "object": "realtime.transcription_session", "modalities": ["text"],
                    "input_audio_format": "pcm16", "input_audio_transcription": self._transcription,
                    "turn_detection": self._turn_detection, "input_audio_noise_reduction": None,
                    "include": self._include}
        return {"id": session_id, "object": "realtime.transcription_session", "type": "transcription",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": self._rate},
                                    "transcription": self._transcription, "turn_detection": self._turn_detection,
                                    "noise_reduction": None}},
                "include": self._include}

    def _event(self, kind: str, **fields: Any) -> str:
        return dump({"type": kind, "event_id": f"event_{self.connection.session_id}_{next(self._event_ids)}",
                     **fields})

    def _error_event(self, kind: str, code: str, message: str, client_event: str | None = None,
                     param: str | None = None) -> str:
        return self._event("error", error={"type": kind, "code": code, "message": message, "param": param,
                                           "event_id": client_event})

    def _error(self, kind: str, code: str, message: str, client_event: str | None = None,
               param: str | None = None) -> list[Action]:
        return [Send(self._error_event(kind, code, message, client_event, param))]


class _ClientMistake(Exception):
    """An event OpenAI's server would answer with an ``error`` event, the session going on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


def _ga_rate(audio_format: Any) -> int:
    if not isinstance(audio_format, dict) or audio_format.get("type", "audio/pcm") != "audio/pcm":
        raise _ClientMistake("invalid_value", "the audio format must be audio/pcm (G.711 is not supported)",
                             "session.audio.input.format")
    rate = audio_format.get("rate", DEFAULT_RATE)
    if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 192000:
        raise _ClientMistake("invalid_value", "the audio rate must be an integer from 8000 to 192000 Hz",
                             "session.audio.input.format.rate")
    return rate


def _check_turn_detection(turn_detection: Any) -> None:
    if turn_detection is None:
        return
    if not isinstance(turn_detection, dict) or turn_detection.get("type") not in ("server_vad", "semantic_vad"):
        raise _ClientMistake("invalid_value", "turn_detection must be null, server_vad or semantic_vad",
                             "turn_detection")
    silence = turn_detection.get("silence_duration_ms", 500)
    if not isinstance(silence, int) or isinstance(silence, bool) or not 80 <= silence <= 60000:
        raise _ClientMistake("invalid_value", "turn_detection.silence_duration_ms must be 80 to 60000",
                             "turn_detection.silence_duration_ms")


def _item(item_id: str, transcript: str | None) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed", "content": [{"type": "input_audio", "transcript": transcript}]}


def _word_logprobs(words: list[Any]) -> list[dict[str, Any]]:
    """One entry per word (with the space that precedes it in the transcript): the log of the
    word's confidence, the model's probability of its least likely token."""
    entries = []
    for i, word in enumerate(words):
        token = word.word if i == 0 else f" {word.word}"
        probability = word.confidence if word.confidence is not None else 0.0
        entries.append({"token": token, "logprob": round(math.log(max(probability, 1e-12)), 4),
                        "bytes": list(token.encode())})
    return entries
