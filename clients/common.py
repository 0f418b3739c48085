"""What every streamd client shares: PCM audio to send, one protocol session, latency figures.

:func:`run_session` speaks docs/protocol.md (through :mod:`streamd.server.protocols.native`, so client and
server build messages with the same code): it sends the config, then audio frames from any
async source while collecting every server message with its receive time. Sources pace
themselves: a file replayed in real time sleeps until each frame's audio "exists", a
microphone produces frames as they are captured. :class:`ServerAccess` carries what a
connection needs beyond its URL (a bearer token, a CA for ``wss://``), and every way a server
can refuse a client becomes one :class:`ClientError` sentence, the same for every client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.http11 import Response

from streamd.audio import ENCODINGS, PcmFormat
from streamd.server.protocols import native as protocol

# soundfile subtypes sent losslessly as 16-bit PCM; everything else is sent as float32.
PCM16_SUBTYPES = {"PCM_16", "PCM_S8", "PCM_U8", "ULAW", "ALAW"}


class ClientError(Exception):
    """A session that could not complete: connection refused, HTTP 401/403/503, TLS, or a server
    ``error``; the message says what happened in one sentence."""

    exit_code = 1


class UsageError(ClientError):
    """What the user asked for cannot work (a bad URL, an unreadable file): exit code 2."""

    exit_code = 2


class AudioFileError(UsageError):
    """An audio file the client cannot read."""


def fail(message: object, exit_code: int = 1) -> int:
    """Report a failure on stderr, without a traceback; return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return exit_code


@dataclass(frozen=True)
class Pcm:
    """Interleaved little-endian audio in one of the protocol's encodings."""

    data: bytes
    sample_rate: int
    channels: int
    encoding: str  # "pcm_s16le" | "f32le"

    @classmethod
    def from_array(cls, samples: np.ndarray, sample_rate: int, encoding: str = "pcm_s16le") -> Pcm:
        """``[n]`` or ``[n, channels]`` float samples in ±1 (or int16 for ``pcm_s16le``)."""
        frames = samples.reshape(len(samples), -1)
        if encoding == "pcm_s16le" and frames.dtype != np.int16:
            frames = np.clip(np.round(frames * 32767.0), -32768, 32767)
        return cls(frames.astype(ENCODINGS[encoding]).tobytes(), sample_rate, frames.shape[1], encoding)

    @classmethod
    def read(cls, path: str) -> Pcm:
        """Any file soundfile reads, at its own rate and channels (the server resamples);
        :class:`AudioFileError` for a file it cannot read."""
        try:
            info = sf.info(path)
            encoding = "pcm_s16le" if info.subtype in PCM16_SUBTYPES else "f32le"
            samples, rate = sf.read(path, dtype="int16" if encoding == "pcm_s16le" else "float32", always_2d=True)
        except Exception as exc:  # soundfile raises several types for missing or unreadable files
            raise AudioFileError(f"cannot read {path}: {exc}") from exc
        return cls.from_array(samples, int(rate), encoding)

    @property
    def format(self) -> PcmFormat:
        """How the server will decode these bytes."""
        return PcmFormat(self.encoding, self.sample_rate, self.channels)

    @property
    def frame_bytes(self) -> int:
        return self.format.frame_bytes

    @property
    def seconds(self) -> float:
        return len(self.data) / self.frame_bytes / self.sample_rate

    def config(self) -> dict[str, Any]:
        """The ``config`` fields that describe this audio."""
        return {"sample_rate": self.sample_rate, "encoding": self.encoding, "channels": self.channels}

    def chunks(self, frame_ms: float) -> list[bytes]:
        """Consecutive pieces of ``frame_ms`` of audio (the last may be shorter)."""
        step = max(1, round(self.sample_rate * frame_ms / 1000)) * self.frame_bytes
        return [self.data[i : i + step] for i in range(0, len(self.data), step)]

    async def replay(self, frame_ms: float, realtime: bool) -> AsyncIterator[tuple[bytes, float]]:
        """``(frame, seconds)`` pairs; in real time each frame waits until its audio has "happened"."""
        started = time.monotonic()
        sent = 0.0
        for chunk in self.chunks(frame_ms):
            seconds = len(chunk) / self.frame_bytes / self.sample_rate
            sent += seconds
            await asyncio.sleep(max(0.0, started + sent - time.monotonic()) if realtime else 0)
            yield chunk, seconds


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p99 (linear interpolation; ``None`` without values)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(np.asarray(values, float), [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4)}


@dataclass
class SessionResult:
    """Everything one session produced; times are seconds since the connection opened."""

    ready: dict[str, Any] = field(default_factory=dict)
    partials: list[dict[str, Any]] = field(default_factory=list)
    finals: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    close_code: int | None = None
    sends: list[tuple[float, float]] = field(default_factory=list)  # (time, audio seconds sent so far)
    eof_sent_s: float | None = None

    @property
    def text(self) -> str:
        return " ".join(f["text"] for f in self.finals if f["text"])

    @property
    def tokens(self) -> list[int]:
        return [t for f in self.finals for t in f["tokens"]]

    def sent_at(self, audio_seconds: float) -> float:
        """When the frame that brought the stream to ``audio_seconds`` was sent."""
        for sent_s, total in self.sends:
            if total >= audio_seconds - 1e-3:  # the server rounds to milliseconds
                return sent_s
        return self.sends[-1][0]

    def latency(self) -> dict[str, Any]:
        """First-partial, per-update and final latencies (see docs/server.md for definitions)."""
        first_audio = self.sends[0][0] if self.sends else None
        updates = [p["received_s"] - self.sent_at(p["audio_seconds"]) for p in self.partials
                   if self.sends and (self.eof_sent_s is None or p["received_s"] < self.eof_sent_s)]
        return {
            "first_partial_s": (round(self.partials[0]["received_s"] - first_audio, 4)
                                if self.partials and first_audio is not None else None),
            # how much audio the server had decoded when it produced the first partial
            "first_partial_audio_s": self.partials[0]["audio_seconds"] if self.partials else None,
            "final_s": (round(self.finals[-1]["received_s"] - self.eof_sent_s, 4)
                        if self.finals and self.eof_sent_s is not None else None),
            "updates": len(updates),
            "update_s": percentiles(updates),
            "update_samples_s": [round(u, 4) for u in updates],
        }


TOKEN_VARIABLE = "STREAMD_TOKEN"  # where --token comes from when not given
OPEN_TIMEOUT_S = 30


@dataclass(frozen=True)
class ServerAccess:
    """What a connection needs beyond its URL."""

    token: str | None = None  # sent as ``Authorization: Bearer TOKEN``
    cafile: str | None = None  # PEM CA certificate(s) to trust for ``wss://`` (a self-signed server)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerAccess:
        return cls(args.token, args.cafile)

    def connect_options(self, url: str) -> dict[str, Any]:
        """Keyword arguments of ``websockets`` ``connect`` for ``url``; :class:`UsageError` for a
        CA file that cannot work."""
        options: dict[str, Any] = {}
        if self.token:
            options["additional_headers"] = {"Authorization": f"Bearer {self.token}"}
        if self.cafile:
            if not url.startswith("wss://"):
                raise UsageError(f"--cafile is for wss:// URLs, not {url}")
            try:
                options["ssl"] = ssl.create_default_context(cafile=self.cafile)
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(f"cannot use --cafile {self.cafile}: {exc}") from None
        return options


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    """``--token`` and ``--cafile``, the same in every client (:meth:`ServerAccess.from_args`)."""
    parser.add_argument("--token", default=os.environ.get(TOKEN_VARIABLE) or None,
                        help=f"bearer token for a server that requires one (default: ${TOKEN_VARIABLE})")
    parser.add_argument("--cafile", default=None,
                        help="CA certificate (PEM) to trust for a wss:// server, e.g. its self-signed certificate")


def refusal_message(response: Response, access: ServerAccess) -> str:
    """Why the server answered the upgrade with an HTTP status instead of a WebSocket."""
    status = response.status_code
    body = response.body.decode(errors="replace").strip()
    try:  # streamd answers {"status": ..., "message": ...} or, when unavailable, {"status", "sessions", ...}
        state = json.loads(body)
    except ValueError:
        state = None
    state = state if isinstance(state, dict) else {}
    retry = response.headers.get("Retry-After")
    again = f"; try again in {retry} s" if retry else ""
    if status == 401:
        return (f"the server requires a token: pass --token (or set ${TOKEN_VARIABLE})" if access.token is None
                else "the server rejected the token (HTTP 401)")
    if status == 503:
        reasons = {
            "full": f"the server is full ({state.get('sessions')} of {state.get('max_sessions')} sessions open)",
            "loading": "the server is still loading its model",
            "draining": "the server is shutting down",
            "failed": "the server's engine failed",
        }
        return reasons.get(state.get("status"), f"the server is unavailable (HTTP 503: {body})") + again
    why = state.get("message") or body or response.reason_phrase  # 403 origin, 429 per-address limit, ...
    return f"the server refused this client (HTTP {status}): {why}{again}"


def connection_error(url: str, exc: Exception, access: ServerAccess) -> ClientError:
    """The :class:`ClientError` for an exception raised while opening a WebSocket to ``url``."""
    host = urlsplit(url).netloc
    if isinstance(exc, InvalidStatus):
        return ClientError(refusal_message(exc.response, access))
    if isinstance(exc, InvalidURI):
        return UsageError(f"not a WebSocket URL: {url} (ws://HOST:PORT/ or wss://HOST:PORT/)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ClientError(f"the TLS certificate of {host} is not trusted ({exc.verify_message}); for a "
                           "self-signed server pass its CA certificate with --cafile")
    # A plain server answers a TLS hello with an HTTP error and closes: the client sees a reset.
    if isinstance(exc, ssl.SSLError) or (url.startswith("wss://") and isinstance(exc, ConnectionResetError)):
        reason = exc.reason if isinstance(exc, ssl.SSLError) else "the server closed the connection"
        return ClientError(f"the TLS handshake with {host} failed ({reason}); does the server serve TLS? "
                           "(ws:// if it does not)")
    if isinstance(exc, InvalidHandshake):  # e.g. ws:// to a TLS port: the answer is not HTTP
        return ClientError(f"{host} did not answer with a WebSocket handshake ({exc}); "
                           "if it serves TLS, use wss://")
    if isinstance(exc, ConnectionRefusedError):
        return ClientError(f"cannot connect to {url}: connection refused (is streamd serve listening there?)")
    if isinstance(exc, socket.gaierror):
        return ClientError(f"cannot connect to {url}: unknown host ({exc.strerror})")
    if isinstance(exc, TimeoutError):
        return ClientError(f"cannot connect to {url}: no WebSocket handshake within {OPEN_TIMEOUT_S} s")
    return ClientError(f"cannot connect to {url}: {exc or type(exc).__name__}")


async def run_session(url: str, config: dict[str, Any], frames: AsyncIterator[tuple[bytes, float]],
                      on_message: Callable[[dict[str, Any]], None] | None = None,
                      access: ServerAccess | None = None) -> SessionResult:
    """One whole session: config, audio from ``frames`` then ``eof``, messages until the close.

    Raises :class:`ClientError` when the connection cannot be opened (see :func:`connection_error`)
    or the server sends an ``error``; an exception of ``frames`` (a microphone that fails) ends the
    session and is raised.
    """
    access = access or ServerAccess()
    options = access.connect_options(url)
    result = SessionResult()
    source_failure: BaseException | None = None
    try:
        async with connect(url, max_size=None, open_timeout=OPEN_TIMEOUT_S, compression=None, **options) as ws:
            opened = time.monotonic()
            await ws.send(protocol.config(**config))
            sender = asyncio.create_task(_send_audio(ws, frames, result, opened))
            receiver = asyncio.create_task(_receive(ws, result, opened, on_message))
            try:
                await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if not sender.done() or (source_failure := sender.exception()) is None:
                    await receiver  # until the server closes (after done, or early with an error)
            finally:  # leaving the block closes the session
                sender.cancel()
                receiver.cancel()
            result.close_code = ws.close_code
    except (InvalidURI, InvalidHandshake, OSError) as exc:  # raised by the opening handshake only
        raise connection_error(url, exc, access) from None
    if source_failure is not None:
        raise source_failure
    if result.error is not None:
        raise ClientError(f"server error {result.error['code']}: {result.error['message']} "
                          f"(close code {result.close_code})")
    if result.done is None:
        raise ClientError(f"connection closed before the session was done (close code {result.close_code})")
    return result


def _collect(result: SessionResult, message: dict[str, Any]) -> None:
    kind = message["type"]
    if kind == "ready":
        result.ready = message
    elif kind == "partial":
        result.partials.append(message)
    elif kind == "final":
        result.finals.append(message)
    elif kind == "done":
        result.done = message
    else:
        result.error = message


async def _receive(ws: Any, result: SessionResult, opened: float,
                   on_message: Callable[[dict[str, Any]], None] | None) -> None:
    try:
        async for text in ws:
            message = protocol.parse_server_message(text)
            message["received_s"] = round(time.monotonic() - opened, 4)
            _collect(result, message)
            if on_message is not None:
                on_message(message)
    except ConnectionClosed:
        pass  # an abnormal close code: run_session reports it


async def _send_audio(ws: Any, frames: AsyncIterator[tuple[bytes, float]], result: SessionResult,
                      opened: float) -> None:
    total = 0.0
    try:
        async for frame, seconds in frames:
            await ws.send(frame)
            total += seconds
            result.sends.append((time.monotonic() - opened, total))
        await ws.send(protocol.eof())
        result.eof_sent_s = time.monotonic() - opened
    except ConnectionClosed:
        pass  # the receive loop reports why


class LiveView:
    """Prints the transcript as it grows: partials rewrite the current line on a TTY."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.tty = out.isatty()

    def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "partial" and self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r\x1b[K" + message["text"][-width:])
            self.out.flush()
        elif message["type"] == "final" and message["text"]:
            self.out.write(("\r\x1b[K" if self.tty else "") + message["text"] + "\n")
            self.out.flush()
        elif message["type"] == "final" and self.tty:  # an utterance without words: clear its line
            self.out.write("\r\x1b[K")
            self.out.flush()


class JsonLines:
    """Prints every server message as one JSON line (with ``received_s``), for scripts."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out

    def __call__(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()
