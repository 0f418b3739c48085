"""Deepgram's live streaming API (``/v1/listen``), as its SDKs speak it.

The upgrade request's query carries the whole configuration (``encoding``, ``sample_rate``,
``channels``, ``interim_results``, ``endpointing``, ``vad_events``, ``utterance_end_ms``, and
``chunk_ms`` for streamd's chunk), so the stream starts on connect. Binary frames are audio; text
frames are ``KeepAlive`` (no reply), ``Finalize`` (the utterance ends; its ``Results`` say
``from_finalize``) and ``CloseStream`` (the last ``Results``, ``Metadata``, close 1000). Results
are interim (``is_final`` false) from the engine's partials when ``interim_results=true``, and
final at the engine's endpoint (``speech_final`` true), at ``Finalize`` and at the end. Word and
transcript ``confidence`` come from the model's token probabilities. A client's mistake ends the
session as Deepgram's does: an ``Error`` message, then a close with code 1008 and a reason.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from streamd import __version__
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
    Finalize,
    ModelInfo,
    Partial,
    ProtocolError,
    SessionConfig,
    Start,
    Started,
    Summary,
)

ENCODINGS = {"linear16": "pcm_s16le", "linear32": "f32le"}
CHANNEL_INDEX = [0, 1]  # [channel, number of channels]: one transcript of the down-mixed audio
CLOSE_REASON_BYTES = 123  # the most a WebSocket close frame's reason may hold
# Deepgram's close codes for a client's mistake and for the server's own limits.
_CLOSE = {ErrorCode.IDLE_TIMEOUT: 1011, ErrorCode.INTERNAL_ERROR: 1011, ErrorCode.SHUTTING_DOWN: 1001,
          ErrorCode.MESSAGE_TOO_BIG: 1009}


class DeepgramAdapter(Adapter):
    name = "deepgram"

    def __init__(self, connection: Connection, model: ModelInfo) -> None:
        super().__init__(connection, model)
        self._audio_hash = hashlib.sha256()
        self._utterance_start = 0.0
        self._finalizing = 0  # Finalize messages whose final has not come yet
        self._speaking: set[int] = set()  # utterances whose SpeechStarted went out
        self._created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self._config: SessionConfig | None = None

    def opening(self) -> list[Action]:
        c = self.connection
        encoding = c.param("encoding") or "linear16"
        if encoding not in ENCODINGS:
            raise ProtocolError(ErrorCode.BAD_CONFIG, f"encoding {encoding!r} is not supported: use "
                                f"{' or '.join(ENCODINGS)} (raw PCM; containers and codecs are not decoded)")
        if c.bool_param("multichannel", False):
            raise ProtocolError(ErrorCode.BAD_CONFIG, "multichannel=true is not supported: channels are down-mixed")
        chunk_ms, att_context_size = self.chunk_from_query()
        self._config = SessionConfig(
            chunk_ms, att_context_size, sample_rate=c.int_param("sample_rate") or 16000,
            encoding=ENCODINGS[encoding], channels=c.int_param("channels") or 1, word_timestamps=True,
            partials=c.bool_param("interim_results", False), endpointing=self._endpointing())
        return [Start(self._config)]

    def _endpointing(self) -> EndpointingOptions:
        """``endpointing=false`` turns it off; ``endpointing=N`` ends an utterance after N ms of
        silence, at least the model's 80 ms frame; absent, streamd's default silence."""
        value = self.connection.param("endpointing")
        if value is None:
            return EndpointingOptions(enabled=True)
        if value.lower() == "false":
            return EndpointingOptions(enabled=False)
        milliseconds = self.connection.int_param("endpointing")
        assert milliseconds is not None
        try:
            return EndpointingOptions(enabled=True, silence_ms=max(milliseconds, 80))
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_CONFIG, str(exc)) from None

    def receive(self, frame: str | bytes) -> list[Action]:
        if isinstance(frame, bytes):
            if not frame:  # Deepgram's original way to close the stream
                return [End()]
            self._audio_hash.update(frame)
            return [Audio(frame)]
        message = json_object(frame, "text frame")
        kind = message.get("type")
        if kind == "KeepAlive":
            return []
        if kind == "Finalize":
            self._finalizing += 1
            return [Finalize()]
        if kind == "CloseStream":
            return [End()]
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"unknown message type {kind!r}: expected KeepAlive, Finalize or CloseStream")

    def event(self, event: Event) -> list[str | bytes]:
        if isinstance(event, Started):
            return []
        if isinstance(event, Partial):
            frames = []
            if self.connection.bool_param("vad_events", False) and event.utterance not in self._speaking:
                self._speaking.add(event.utterance)
                frames.append(dump({"type": "SpeechStarted", "channel": CHANNEL_INDEX,
                                    "timestamp": round(self._utterance_start, 3)}))
            confidence = sum(event.probabilities) / len(event.probabilities) if event.probabilities else 0.0
            frames.append(self._results(event.text, round(confidence, 4), [], self._utterance_start,
                                        event.audio_seconds, is_final=False))
            return frames
        assert isinstance(event, Final)
        utterance = event.utterance
        from_finalize = event.reason == "finalize" and self._finalizing > 0
        if from_finalize:
            self._finalizing -= 1
        words = [{"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence or 0.0}
                 for w in utterance.words]
        endpoint = event.reason == "endpoint"
        frames = [self._results(utterance.text, utterance.confidence, words, utterance.start, utterance.end,
                                is_final=True, speech_final=endpoint, from_finalize=from_finalize)]
        if endpoint and self.connection.param("utterance_end_ms") is not None and words:
            frames.append(dump({"type": "UtteranceEnd", "channel": CHANNEL_INDEX, "last_word_end": words[-1]["end"]}))
        self._utterance_start = utterance.end
        return frames

    def closing(self, ending: ProtocolError | None, summary: Summary) -> Closing:
        if ending is None:
            return Closing([self._metadata(summary)], CLOSE_NORMAL)
        prefix = "NET-0001" if ending.code is ErrorCode.IDLE_TIMEOUT else "DATA-0000"
        reason = f"{prefix}: {ending.message}".encode()[:CLOSE_REASON_BYTES].decode(errors="ignore")
        error = dump({"type": "Error", "variant": ending.code.value, "description": ending.message,
                      "code": ending.code.value, "message": ending.message})
        # A stream the server shuts down ends as after CloseStream (its Metadata), then says why.
        frames = [self._metadata(summary)] if ending.code is ErrorCode.SHUTTING_DOWN and self._config else []
        return Closing([*frames, error], _CLOSE.get(ending.code, 1008), reason)

    def _results(self, transcript: str, confidence: float, words: list[dict[str, Any]], start: float, end: float,
                 *, is_final: bool, speech_final: bool = False, from_finalize: bool = False) -> str:
        return dump({
            "type": "Results", "channel_index": CHANNEL_INDEX, "duration": round(max(end - start, 0.0), 3),
            "start": round(start, 3), "is_final": is_final, "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": confidence, "words": words}]},
            "metadata": {"request_id": self.connection.session_id, "model_uuid": self.model.name,
                         "model_info": {"name": self.model.name, "version": __version__,
                                        "arch": "cache-aware-fastconformer-rnnt"}},
        })

    def _metadata(self, summary: Summary) -> str:
        assert self._config is not None
        return dump({"type": "Metadata", "transaction_key": "deprecated", "request_id": summary.session_id,
                     "sha256": self._audio_hash.hexdigest(), "created": self._created,
                     "duration": round(summary.audio_seconds, 3), "channels": self._config.channels})
