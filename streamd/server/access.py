"""Who may open a session: bearer tokens and browser origins, checked before the upgrade.

A request is refused with HTTP 401 (no valid token, when tokens are configured) or 403 (a web
page of another site: cross-site WebSocket hijacking) before any WebSocket handshake, so nothing
reaches a session. ``/healthz`` and ``/readyz`` stay open (load balancers and probes carry no
tokens).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers

TOKENS_ENV = "STREAMD_AUTH_TOKENS"
TOKEN_SCHEMES = ("bearer", "token")  # "Token" is Deepgram's form


class AccessError(ValueError):
    """Access settings that cannot be used (an unreadable or empty tokens file)."""


def load_tokens(tokens_file: str, environ: dict[str, str] | None = None) -> list[str]:
    """The tokens of ``tokens_file`` (one per line; blank lines and ``#`` comments skipped) and of
    ``$STREAMD_AUTH_TOKENS`` (separated by commas or whitespace)."""
    environ = os.environ if environ is None else environ
    tokens = environ.get(TOKENS_ENV, "").replace(",", " ").split()
    if tokens_file:
        try:
            lines = Path(tokens_file).read_text().splitlines()
        except OSError as exc:
            raise AccessError(f"auth_tokens_file {tokens_file}: {exc.strerror or exc}") from None
        file_tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not file_tokens:
            raise AccessError(f"auth_tokens_file {tokens_file} holds no token")
        tokens += file_tokens
    return tokens


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


class Access:
    """The tokens and origins a server accepts."""

    def __init__(self, tokens: Iterable[str], allowed_origins: Iterable[str]) -> None:
        self._tokens = [token.encode() for token in tokens]
        self._origins = {origin.rstrip("/").lower() for origin in allowed_origins}

    @property
    def requires_token(self) -> bool:
        return bool(self._tokens)

    def authorized(self, path: str, headers: Headers) -> bool:
        """A valid token in ``Authorization: Bearer|Token T`` or ``?token=T`` (browsers and
        WhisperLive cannot set headers), or no tokens configured. Compared in constant time, and
        against every token, so the time taken says nothing about any of them."""
        if not self._tokens:
            return True
        offered = []
        scheme, _, credential = headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() in TOKEN_SCHEMES:
            offered.append(credential.strip().encode())
        offered += [value.encode() for value in parse_qs(urlsplit(path).query).get("token", [])]
        matched = False
        for candidate in offered:
            for token in self._tokens:
                matched |= hmac.compare_digest(candidate, token)
        return matched

    def origin_allowed(self, headers: Headers, scheme: str) -> bool:
        """No ``Origin`` (not a browser), the server's own origin (its page), or one of
        ``allowed_origins`` (``*``: any)."""
        origin = headers.get("Origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if "*" in self._origins or origin in self._origins:
            return True
        host = headers.get("Host", "").lower()
        return bool(host) and origin == f"{scheme}://{host}"
