"""The wire protocol of ``docs/protocol.md``: parsing and building every message.

The only module that knows message shapes. The server side parses client text frames
(:func:`parse_client_message`) and session configs (:func:`parse_config`), and builds ``ready``,
``partial``, ``final``, ``done``, ``error`` and the HTTP bodies; the clients build ``config``,
``eof`` and ``finalize`` and parse server messages here too, so both ends agree by construction.
Deliberately free of torch and NeMo imports: the clients import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any

from streamd.audio import AudioError, PcmFormat
from streamd.engine.endpointing import EndpointingOptions

if TYPE_CHECKING:
    from streamd.engine.stream import Utterance

CLOSE_NORMAL = 1000
CLIENT_MESSAGE_TYPES = ("config", "eof", "finalize")
SERVER_MESSAGE_TYPES = ("ready", "partial", "final", "done", "error")


class ErrorCode(str, Enum):
    """Error codes of ``error`` messages; :attr:`close_code` is the WebSocket close code that follows."""

    SHUTTING_DOWN = "shutting_down"
    BAD_MESSAGE = "bad_message"
    BAD_CONFIG = "bad_config"
    AUDIO_BEFORE_CONFIG = "audio_before_config"
    BAD_AUDIO = "bad_audio"
    MESSAGE_TOO_BIG = "message_too_big"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_SESSION = "max_session"
    INTERNAL_ERROR = "internal_error"

    @property
    def close_code(self) -> int:
        return _CLOSE_CODES[self]


_CLOSE_CODES = {
    ErrorCode.SHUTTING_DOWN: 1001,
    ErrorCode.BAD_MESSAGE: 4000,
    ErrorCode.BAD_CONFIG: 4001,
    ErrorCode.AUDIO_BEFORE_CONFIG: 4002,
    ErrorCode.BAD_AUDIO: 4003,
    ErrorCode.MESSAGE_TOO_BIG: 1009,
    ErrorCode.IDLE_TIMEOUT: 4008,
    ErrorCode.MAX_SESSION: 4009,
    ErrorCode.INTERNAL_ERROR: 1011,
}


class ProtocolError(Exception):
    """A reason to end a session with an ``error`` message (see :class:`ErrorCode`)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ModelInfo:
    """What the ``ready`` message says about the model, and the chunk sizes a config may pick."""

    name: str
    sample_rate: int
    chunk_sizes: dict[int, tuple[int, int]]  # chunk_ms -> att_context_size [left, right]
    default_chunk_ms: int

    @classmethod
    def describe(cls, name: str, sample_rate: int, att_context_sizes: list[tuple[int, int]],
                 frame_s: float, default_chunk_ms: int) -> ModelInfo:
        """A chunk of ``[left, right]`` is ``right + 1`` encoder frames (80 ms each for FastConformer)."""
        chunks = {round((right + 1) * frame_s * 1000): (left, right) for left, right in att_context_sizes}
        if default_chunk_ms not in chunks:
            raise ValueError(f"default_chunk_ms={default_chunk_ms} is not a chunk size of this model; "
                             f"choose one of {sorted(chunks)}")
        return cls(name, sample_rate, dict(sorted(chunks.items())), default_chunk_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sample_rate": self.sample_rate, "chunk_ms": list(self.chunk_sizes)}


@dataclass(frozen=True)
class SessionConfig:
    """A validated ``config`` message with every default filled in."""

    chunk_ms: int
    att_context_size: tuple[int, int]
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    channels: int = 1
    word_timestamps: bool = True
    partials: bool = True
    endpointing: EndpointingOptions = field(default_factory=EndpointingOptions)

    @property
    def pcm_format(self) -> PcmFormat:
        return PcmFormat(self.encoding, self.sample_rate, self.channels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "encoding": self.encoding,
            "channels": self.channels,
            "chunk_ms": self.chunk_ms,
            "att_context_size": list(self.att_context_size),
            "word_timestamps": self.word_timestamps,
            "partials": self.partials,
            "endpointing": {"enabled": self.endpointing.enabled, "silence_ms": self.endpointing.silence_ms},
        }


# ---------------------------------------------------------------------- parsing (server side)
@dataclass(frozen=True)
class ClientMessage:
    """A client text frame: its ``type`` and the other fields."""

    type: str
    fields: dict[str, Any]


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{what} is not a JSON object")
    return data


def parse_client_message(text: str) -> ClientMessage:
    """A client text frame -> :class:`ClientMessage`; :class:`ProtocolError` ``bad_message`` otherwise."""
    data = _json_object(text, "text frame")
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


def _chunk(data: dict[str, Any], model: ModelInfo) -> tuple[int, tuple[int, int]]:
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
    chunk_ms = _typed(data, "chunk_ms", int, model.default_chunk_ms)
    if chunk_ms not in model.chunk_sizes:
        raise _bad_config(f"chunk_ms {chunk_ms} not supported: choose one of {list(model.chunk_sizes)}")
    return chunk_ms, model.chunk_sizes[chunk_ms]


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


def parse_config(data: dict[str, Any], model: ModelInfo) -> SessionConfig:
    """The fields of a ``config`` message -> :class:`SessionConfig`, or ``bad_config``."""
    known = {f.name for f in fields(SessionConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _bad_config(f"unknown config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    chunk_ms, att_context_size = _chunk(data, model)
    defaults = SessionConfig(chunk_ms, att_context_size)
    config = SessionConfig(
        chunk_ms=chunk_ms,
        att_context_size=att_context_size,
        sample_rate=_typed(data, "sample_rate", int, defaults.sample_rate),
        encoding=_typed(data, "encoding", str, defaults.encoding),
        channels=_typed(data, "channels", int, defaults.channels),
        word_timestamps=_typed(data, "word_timestamps", bool, defaults.word_timestamps),
        partials=_typed(data, "partials", bool, defaults.partials),
        endpointing=_endpointing(data),
    )
    try:
        config.pcm_format  # noqa: B018 - validates encoding, sample_rate and channels
    except AudioError as exc:
        raise _bad_config(str(exc)) from None
    return config


# ---------------------------------------------------------------------- building (server side)
def _dump(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def ready(session_id: str, config: SessionConfig, model: ModelInfo) -> str:
    return _dump({"type": "ready", "session_id": session_id, "config": config.to_dict(),
                  "model": model.to_dict()})


def partial(utterance: int, text: str, tokens: list[int], audio_seconds: float) -> str:
    return _dump({"type": "partial", "utterance": utterance, "text": text, "tokens": list(tokens),
                  "audio_seconds": round(audio_seconds, 3)})


def final(utterance: Utterance, reason: str, word_timestamps: bool) -> str:
    """A ``final``; ``reason`` overrides the engine's (a stream the server ends says why)."""
    data = utterance.to_dict()
    message = {"type": "final", "utterance": data["index"], "text": data["text"], "tokens": data["tokens"]}
    if word_timestamps:
        message["words"] = data["words"]
    message.update(start=data["start"], end=data["end"], reason=reason)
    return _dump(message)


def done(session_id: str, audio_seconds: float, utterances: int) -> str:
    return _dump({"type": "done", "session_id": session_id, "audio_seconds": round(audio_seconds, 3),
                  "utterances": utterances})


def error(code: ErrorCode, message: str) -> str:
    return _dump({"type": "error", "code": code.value, "message": message})


def health() -> str:
    return _dump({"status": "ok"})


def readiness(status: str, sessions: int, max_sessions: int) -> str:
    return _dump({"status": status, "sessions": sessions, "max_sessions": max_sessions})


# ---------------------------------------------------------------------- client side
def config(**options: Any) -> str:
    """A ``config`` message; ``options`` are the fields of the table in docs/protocol.md."""
    return _dump({"type": "config", **options})


def eof() -> str:
    return _dump({"type": "eof"})


def finalize() -> str:
    return _dump({"type": "finalize"})


def parse_server_message(text: str | bytes) -> dict[str, Any]:
    """A server text frame as a dict with a known ``type``; ``ValueError`` for anything else."""
    try:
        data = _json_object(text, "server message")
    except ProtocolError as exc:
        raise ValueError(exc.message) from None
    if data.get("type") not in SERVER_MESSAGE_TYPES:
        raise ValueError(f"unknown server message type {data.get('type')!r}")
    return data
