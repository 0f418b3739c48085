"""The adapter interface every wire protocol implements, and the parsing they share.

An adapter is sans-I/O (python-websockets' ``protocol.py`` is the model): a pure translation of
frames in to actions out, and of the session core's events to frames, so each protocol is tested
without sockets. It knows nothing of the engine; the core knows nothing of any wire format.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from streamd.server.wire import (
    Action,
    Closing,
    Connection,
    ErrorCode,
    Event,
    ModelInfo,
    ProtocolError,
    Summary,
)


class Adapter(ABC):
    """One connection of one wire protocol. The core calls :meth:`opening` once, :meth:`receive`
    for each client frame, :meth:`event` for each event of its stream, and :meth:`closing` once."""

    name: ClassVar[str]  # as in logs and metrics: "native", "openai", ...
    # A full server refuses upgrades with HTTP 503. A protocol whose clients expect to hear it
    # over the WebSocket (WhisperLive's WAIT) sets this: its upgrade goes through, not admitted,
    # and :meth:`full` answers the client's first frame.
    answers_full: ClassVar[bool] = False

    def __init__(self, connection: Connection, model: ModelInfo) -> None:
        self.connection = connection
        self.model = model

    def opening(self) -> list[Action]:
        """Actions on connect, before any client frame: a greeting, or ``Start`` where the upgrade
        request carries the whole configuration."""
        return []

    @abstractmethod
    def receive(self, frame: str | bytes) -> list[Action]:
        """A client frame -> actions; raises :class:`ProtocolError` for input the protocol refuses."""

    @abstractmethod
    def event(self, event: Event) -> list[str | bytes]:
        """A stream event -> frames to send."""

    @abstractmethod
    def closing(self, ending: ProtocolError | None, summary: Summary) -> Closing:
        """The last frames and the close: after the stream's last final (``ending`` None: the client
        ended the audio), or for why the session ends early."""

    def full(self, first_frame: str | bytes, retry_after_s: float) -> Closing:
        """A full server's refusal, in the protocol's words, of a client whose first frame this is
        (only where :attr:`answers_full`)."""
        raise NotImplementedError(f"{self.name} is refused with HTTP 503 when the server is full")

    def chunk_from_query(self) -> tuple[int, tuple[int, int]]:
        """The chunk a ``chunk_ms`` query parameter picks, else the server's default."""
        return self.model.chunk(self.connection.int_param("chunk_ms"))


def json_value(text: str | bytes, what: str) -> Any:
    """Parsed JSON, or ``bad_message``: also for nesting deeper than the parser's recursion limit
    (a 2 KB frame of ``[`` raises RecursionError, not ValueError) and for bytes that are not UTF-8."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{what} is not valid JSON") from None


def json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """A JSON object, or ``bad_message``."""
    data = json_value(text, what)
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{what} is not a JSON object")
    return data


def dump(message: dict[str, Any]) -> str:
    """Compact JSON, as every adapter sends it."""
    return json.dumps(message, separators=(",", ":"))


CLOSE_REASON_BYTES = 123  # the most a WebSocket close frame's reason may hold


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame's reason (whole UTF-8 characters)."""
    return text.encode()[:CLOSE_REASON_BYTES].decode(errors="ignore")
