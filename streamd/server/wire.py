"""What the session core and the wire-protocol adapters say to each other (no I/O, no torch).

An adapter (:mod:`streamd.server.protocols`) turns each client frame into :data:`Action`\\ s for
the core (start a stream, audio, finalize, end, a reply) and each core :data:`Event` (the stream
started, a partial, a final) into frames of its own protocol. Why a session ends is a
:class:`ProtocolError` with a protocol-neutral :class:`ErrorCode`; each adapter says it in its own
error form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from streamd.audio import AudioError, PcmFormat
from streamd.engine.endpointing import EndpointingOptions

if TYPE_CHECKING:
    from streamd.engine.stream import Utterance


class ErrorCode(str, Enum):
    """Why a session ends early; :attr:`close_code` is the WebSocket close code that follows."""

    SHUTTING_DOWN = "shutting_down"
    BAD_MESSAGE = "bad_message"
    BAD_CONFIG = "bad_config"
    AUDIO_BEFORE_CONFIG = "audio_before_config"
    BAD_AUDIO = "bad_audio"
    MESSAGE_TOO_BIG = "message_too_big"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_SESSION = "max_session"
    CONFIG_TIMEOUT = "config_timeout"
    SLOW_READER = "slow_reader"
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
    ErrorCode.CONFIG_TIMEOUT: 4010,
    ErrorCode.SLOW_READER: 4012,
    ErrorCode.INTERNAL_ERROR: 1011,
}
CLOSE_NORMAL = 1000

# The final's reason when the server ends a stream; a client's error ends it with "error".
END_REASONS = {
    ErrorCode.SHUTTING_DOWN: "shutdown",
    ErrorCode.IDLE_TIMEOUT: "idle_timeout",
    ErrorCode.MAX_SESSION: "max_session",
    ErrorCode.INTERNAL_ERROR: "internal_error",
}


class ProtocolError(Exception):
    """A reason to end a session (see :class:`ErrorCode`); ``message`` is for the client."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ModelInfo:
    """What clients are told about the model, and the chunk sizes a session may pick."""

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

    def chunk(self, chunk_ms: int | None) -> tuple[int, tuple[int, int]]:
        """``(chunk_ms, att_context_size)`` of a requested chunk (None: the default), or ``bad_config``."""
        chunk_ms = self.default_chunk_ms if chunk_ms is None else chunk_ms
        if chunk_ms not in self.chunk_sizes:
            raise ProtocolError(ErrorCode.BAD_CONFIG,
                                f"chunk_ms {chunk_ms} not supported: choose one of {list(self.chunk_sizes)}")
        return chunk_ms, self.chunk_sizes[chunk_ms]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sample_rate": self.sample_rate, "chunk_ms": list(self.chunk_sizes)}


@dataclass(frozen=True)
class SessionConfig:
    """One session's settings, every default filled in: its audio format and its stream's options."""

    chunk_ms: int
    att_context_size: tuple[int, int]
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    channels: int = 1
    word_timestamps: bool = True
    partials: bool = True
    endpointing: EndpointingOptions = field(default_factory=EndpointingOptions)

    def __post_init__(self) -> None:
        try:
            self.pcm_format  # noqa: B018 - validates encoding, sample_rate and channels
        except AudioError as exc:
            raise ProtocolError(ErrorCode.BAD_CONFIG, str(exc)) from None

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


@dataclass(frozen=True)
class Connection:
    """What an adapter knows of its connection: the upgrade request's path, query and headers."""

    session_id: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names

    @classmethod
    def from_request(cls, session_id: str, target: str, headers: dict[str, str]) -> Connection:
        path, _, query = target.partition("?")
        return cls(session_id, path, parse_qs(query, keep_blank_values=True),
                   {name.lower(): value for name, value in headers.items()})

    def param(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    def int_param(self, name: str) -> int | None:
        """Query parameter ``name`` as an integer, or None; ``bad_config`` if it is not one."""
        value = self.param(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_CONFIG, f"query parameter {name}={value!r} is not an integer") from None

    def bool_param(self, name: str, default: bool) -> bool:
        """Query parameter ``name`` as a boolean (``true``/``false``, any case, or 1/0)."""
        value = self.param(name)
        if value is None:
            return default
        if value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0"):
            return False
        raise ProtocolError(ErrorCode.BAD_CONFIG, f"query parameter {name}={value!r} is not true or false")


# ---------------------------------------------------------------------- adapter -> core
@dataclass(frozen=True)
class Send:
    """A frame to send to the client now."""

    frame: str | bytes


@dataclass(frozen=True)
class Start:
    """Open the session's engine stream with this config (once per session)."""

    config: SessionConfig


@dataclass(frozen=True)
class Audio:
    """Audio bytes in the session config's PCM format."""

    data: bytes


@dataclass(frozen=True)
class Finalize:
    """End the current utterance now (its final follows)."""


@dataclass(frozen=True)
class EndStream:
    """This stream's audio is complete: all of it is decoded and its last final sent before the
    session reads on; a later ``Start`` opens the next stream (OpenAI's commit: one item each)."""


@dataclass(frozen=True)
class End:
    """No more audio: the last final, then the adapter's closing frames, then close."""


Action = Send | Start | Audio | Finalize | EndStream | End


# ---------------------------------------------------------------------- core -> adapter
@dataclass(frozen=True)
class Started:
    """The engine stream is open."""

    config: SessionConfig


@dataclass(frozen=True)
class Partial:
    """The current utterance's whole text changed."""

    utterance: int
    text: str
    tokens: list[int]
    probabilities: list[float]  # the model's, of each token
    audio_seconds: float


@dataclass(frozen=True)
class Final:
    """An utterance ended; ``reason`` is the engine's, or why the server ended the stream."""

    utterance: Utterance
    reason: str
    audio_seconds: float


Event = Started | Partial | Final


@dataclass(frozen=True)
class Summary:
    """The session as it ends: for closing messages (native ``done``, Deepgram ``Metadata``)."""

    session_id: str
    audio_seconds: float  # stream audio received, at the model's rate
    utterances: int


@dataclass(frozen=True)
class Closing:
    """How the adapter ends its connection: frames to send, then the close code and reason."""

    frames: list[str | bytes]
    code: int = CLOSE_NORMAL
    reason: str = ""
