"""streamd's own wire protocol (docs/protocol.md): its messages, both sides, and its adapter.

The only code that knows the native message shapes. The server side parses client text frames
(:func:`parse_client_message`) and configs (:func:`parse_config`) and builds ``ready``,
``partial``, ``final``, ``done`` and ``error`` (:class:`NativeAdapter`); the clients build
``config``, ``eof`` and ``finalize`` and parse server messages here too, so both ends agree by
construction. Free of torch and NeMo imports: the clients import it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from streamd.engine.endpointing import EndpointingOptions
from streamd.server.protocols.base import Adapter, dump, json_object
from streamd.server.wire import (
    CLOSE_NORMAL,
    Action,
    Audio,
    Closing,
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

if TYPE_CHECKING:
    from streamd.engine.stream import Utterance

CLIENT_MESSAGE_TYPES = ("config", "eof", "finalize")
SERVER_MESSAGE_TYPES = ("ready", "partial", "final", "done", "error")


class NativeAdapter(Adapter):
    """``config`` first, then audio frames, ``finalize`` and ``eof``; ``ready``, ``partial``,
    ``final``, ``done``, ``error`` back."""

    name = "native"

    def __init__(self, connection: Any, model: ModelInfo) -> None:
        super().__init__(connection, model)
        self.config: SessionConfig | None = None
        self._started = False

    def receive(self, frame: str | bytes) -> list[Action]:
        if self.config is None:
            if isinstance(frame, bytes):
                raise ProtocolError(ErrorCode.AUDIO_BEFORE_CONFIG, "send a config message before audio")
            message = parse_client_message(frame)
            if message.type != "config":
                raise ProtocolError(ErrorCode.AUDIO_BEFORE_CONFIG, f"{message.type} before config")
            # A chunk_ms in the URL is the default a config's own choice overrides.
            self.config = parse_config(message.fields, self.model, self.connection.int_param("chunk_ms"))
            return [Start(self.config)]
        if isinstance(frame, bytes):
            return [Audio(frame)]
        message = parse_client_message(frame)
        if message.type == "eof":
            return [End()]
        if message.type == "config":
            raise ProtocolError(ErrorCode.BAD_CONFIG, "config may be sent only once")
        return [Finalize()]

    def event(self, event: Event) -> list[str | bytes]:
        assert self.config is not None
        if isinstance(event, Started):
            self._started = True
            return [ready(self.connection.session_id, event.config, self.model)]
        if isinstance(event, Partial):
            return [partial(event.utterance, event.text, event.tokens, event.audio_seconds)]
        assert isinstance(event, Final)
        return [final(event.utterance, event.reason, self.config.word_timestamps)]

    def closing(self, ending: ProtocolError | None, summary: Summary) -> Closing:
        finished = done(summary.session_id, summary.audio_seconds, summary.utterances)
        if ending is None:
            return Closing([finished], CLOSE_NORMAL)
        # A stream the server shuts down ends as after eof (done), then says why.
        frames = [finished] if ending.code is ErrorCode.SHUTTING_DOWN and self._started else []
        return Closing([*frames, error(ending.code, ending.message)], ending.code.close_code, ending.code.value)


# ---------------------------------------------------------------------- parsing (server side)
@dataclass(frozen=True)
class ClientMessage:
    """A client text frame: its ``type`` and the other fields."""

    type: str
    fields: dict[str, Any]


def parse_client_message(text: str) -> ClientMessage:
    """A client text frame -> :class:`ClientMessage`; :class:`ProtocolError` ``bad_message`` otherwise."""
    data = json_object(text, "text frame")
    kind = data.pop("type", None)
    if kind not in CLIENT_MESSAGE_TYPES:
        expected = ", ".join(CLIENT_MESSAGE_TYPES)
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown message type {kind!r}: expected {expected}")
    return ClientMessage(kind, data)


def _bad_config(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_CONFIG, message)


def _typed(data: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """``data[name]`` checked against ``kind`` (``bool`` is not an ``int`` here), or ``default``."""
    if name not in data:
        return default
    value = data[name]
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _bad_config(f"{name} must be {kind.__name__}, not {type(value).__name__} {value!r}")
    return value


def _chunk(data: dict[str, Any], model: ModelInfo, default_chunk_ms: int | None) -> tuple[int, tuple[int, int]]:
    if "chunk_ms" in data and "att_context_size" in data:
        raise _bad_config("give chunk_ms or att_context_size, not both")
    if "att_context_size" in data:
        size = data["att_context_size"]
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            raise _bad_config(f"att_context_size must be [left, right] integers, not {size!r}")
        for chunk_ms, supported in model.chunk_sizes.items():
            if supported == tuple(size):
                return chunk_ms, supported
        raise _bad_config(f"att_context_size {size} not supported: choose one of "
                          f"{[list(s) for s in model.chunk_sizes.values()]}")
    return model.chunk(_typed(data, "chunk_ms", int, default_chunk_ms))


def _endpointing(data: dict[str, Any]) -> EndpointingOptions:
    value = _typed(data, "endpointing", dict, {})
    unknown = sorted(set(value) - {"enabled", "silence_ms"})
    if unknown:
        raise _bad_config(f"unknown endpointing field(s): {', '.join(unknown)}")
    defaults = EndpointingOptions()
    try:
        return EndpointingOptions(
            enabled=_typed(value, "enabled", bool, defaults.enabled),
            silence_ms=_typed(value, "silence_ms", int, defaults.silence_ms),
        )
    except ValueError as exc:
        raise _bad_config(str(exc)) from None


def parse_config(data: dict[str, Any], model: ModelInfo, default_chunk_ms: int | None = None) -> SessionConfig:
    """The fields of a ``config`` message -> :class:`SessionConfig`, or ``bad_config``.
    ``default_chunk_ms``: the chunk when the config names none (None: the model's default)."""
    known = {f.name for f in fields(SessionConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _bad_config(f"unknown config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    chunk_ms, att_context_size = _chunk(data, model, default_chunk_ms)
    defaults = SessionConfig(chunk_ms, att_context_size)
    return SessionConfig(
        chunk_ms=chunk_ms,
        att_context_size=att_context_size,
        sample_rate=_typed(data, "sample_rate", int, defaults.sample_rate),
        encoding=_typed(data, "encoding", str, defaults.encoding),
        channels=_typed(data, "channels", int, defaults.channels),
        word_timestamps=_typed(data, "word_timestamps", bool, defaults.word_timestamps),
        partials=_typed(data, "partials", bool, defaults.partials),
        endpointing=_endpointing(data),
    )


# ---------------------------------------------------------------------- building (server side)
def ready(session_id: str, config: SessionConfig, model: ModelInfo) -> str:
    return dump({"type": "ready", "session_id": session_id, "config": config.to_dict(), "model": model.to_dict()})


def partial(utterance: int, text: str, tokens: list[int], audio_seconds: float) -> str:
    return dump({"type": "partial", "utterance": utterance, "text": text, "tokens": list(tokens),
                 "audio_seconds": round(audio_seconds, 3)})


def final(utterance: Utterance, reason: str, word_timestamps: bool) -> str:
    """A ``final``; ``reason`` overrides the engine's (a stream the server ends says why)."""
    data = utterance.to_dict()
    message = {"type": "final", "utterance": data["index"], "text": data["text"], "tokens": data["tokens"]}
    if word_timestamps:
        message["words"] = data["words"]
    message.update(start=data["start"], end=data["end"], reason=reason)
    return dump(message)


def done(session_id: str, audio_seconds: float, utterances: int) -> str:
    return dump({"type": "done", "session_id": session_id, "audio_seconds": round(audio_seconds, 3),
                 "utterances": utterances})


def error(code: ErrorCode, message: str) -> str:
    return dump({"type": "error", "code": code.value, "message": message})


# ---------------------------------------------------------------------- client side
def config(**options: Any) -> str:
    """A ``config`` message; ``options`` are the fields of the table in docs/protocol.md."""
    return dump({"type": "config", **options})


def eof() -> str:
    return dump({"type": "eof"})


def finalize() -> str:
    return dump({"type": "finalize"})


def parse_server_message(text: str | bytes) -> dict[str, Any]:
    """A server text frame as a dict with a known ``type``; ``ValueError`` for anything else."""
    try:
        data = json_object(text, "server message")
    except ProtocolError as exc:
        raise ValueError(exc.message) from None
    if data.get("type") not in SERVER_MESSAGE_TYPES:
        raise ValueError(f"unknown server message type {data.get('type')!r}")
    return data
