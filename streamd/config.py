"""Typed configuration from ``key=value`` overrides: dataclass schemas composed by Hydra.

A command declares its settings as a dataclass (defaults and checks in one place) and calls
:func:`load_config` with the command line's ``key=value`` words. Hydra's compose API parses
them with the grammar NeMo users know, OmegaConf checks each value against the field's type,
and the dataclass's ``__post_init__`` checks ranges. Every failure becomes a
:class:`ConfigError` whose message names the key and the fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from hydra import compose, initialize
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """Configuration that cannot be used; the message says which key and why."""


@dataclass
class ServeConfig:
    """Settings of ``streamd serve``; docs/server.md documents every key."""

    model: str = ""  # .nemo file or pretrained model name; empty: the model shipped with streamd
    host: str = "127.0.0.1"
    port: int = 8765  # 0 = any free port (logged at start)
    # Access (docs/security.md): tokens for sessions and /metrics; required off loopback.
    auth_tokens_file: str = ""  # one token per line; also $STREAMD_AUTH_TOKENS
    allow_unauthenticated: bool = False  # serve a non-loopback host without tokens anyway
    allowed_origins: list[str] = field(default_factory=list)  # browser origins besides the server's own; * = any
    tls_cert: str = ""  # PEM certificate (chain): wss:// and https:// on every port
    tls_key: str = ""  # its PEM private key
    # Listeners of protocols whose clients cannot choose a path (docs/protocols.md); 0 = off.
    whisperlive_port: int = 0
    vosk_port: int = 0
    sherpa_port: int = 0
    metrics_port: int = 0  # /metrics also here, without tokens (an operators' network); 0 = the main port only
    device: str = "auto"  # auto|cpu|cuda[:N]|npu[:N]
    dtype: str = "float32"  # float32|float16|bfloat16
    threads: int = 1  # torch CPU threads for model work; 0 = torch's default (one per core)
    max_sessions: int = 64  # concurrent WebSocket sessions; more get HTTP 503
    max_batch: int = 32  # streams per model step
    decoder_cuda_graphs: bool = True  # RNNT decoder label loop as CUDA graphs (CUDA only)
    encoder_cuda_graphs: bool = False  # encoder's steady streaming steps as CUDA graphs (CUDA only)
    warmup_batch: int = 0  # streams per chunk size in the warm-up's batch; 0 = max_batch on CUDA, none elsewhere
    default_chunk_ms: int = 1120  # chunk of a session whose config names none
    load_log_interval_s: float = 10.0  # how often the engine's load is logged (engine load); 0 = never
    batch_window_ms: float = 0.0  # an idle engine, woken by audio, waits this long for more before stepping
    engine_process: bool = False  # run the engine in a child process (its own GIL) instead of a thread
    max_message_bytes: int = 1_048_576  # larger frames end the session (message_too_big)
    idle_timeout_s: float = 30.0  # no client message this long ends the session
    max_session_s: float = 3600.0  # audio seconds one session may stream
    max_sessions_per_ip: int = 16  # concurrent sessions from one client address (HTTP 429 beyond); 0 = no limit
    config_timeout_s: float = 10.0  # from the upgrade until the session's stream starts (its config)
    max_session_wall_s: float = 14400.0  # wall-clock seconds one session may last
    max_backlog_s: float = 30.0  # audio received but not yet processed, per session: reading pauses beyond
    send_timeout_s: float = 10.0  # a client that takes no message for this long is closed (slow_reader)
    shutdown_timeout_s: float = 30.0  # on SIGTERM, how long active streams get to finish

    def __post_init__(self) -> None:
        ports = ("port", "whisperlive_port", "vosk_port", "sherpa_port", "metrics_port")
        for name in ports:
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be between 0 and 65535")
        chosen = [getattr(self, name) for name in ports if getattr(self, name)]
        if len(set(chosen)) < len(chosen):
            raise ValueError(f"{', '.join(ports)} must differ (0 excepted)")
        for name in ("threads", "warmup_batch", "load_log_interval_s", "batch_window_ms"):
            if getattr(self, name) < 0:  # 0 has a meaning for each (docs/server.md)
                raise ValueError(f"{name} must be 0 or more")
        for name in ("max_sessions", "max_batch", "default_chunk_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        for name in ("idle_timeout_s", "max_session_s", "shutdown_timeout_s", "config_timeout_s",
                     "max_session_wall_s", "max_backlog_s", "send_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_sessions_per_ip < 0:
            raise ValueError("max_sessions_per_ip must be 0 (no limit) or more")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both or neither")


def config_keys(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _check_keys(schema: type, overrides: Sequence[str]) -> None:
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        detail = ": ".join(str(exc).splitlines()[:2])
        raise ConfigError(f"cannot parse overrides (use key=value): {detail}") from None
    keys = config_keys(schema)
    for override in parsed:
        if override.key_or_group not in keys:
            raise ConfigError(f"unknown key {override.key_or_group!r}; valid keys: {', '.join(keys)}")


def load_config(schema: type[T], overrides: Sequence[str]) -> T:
    """Defaults of the dataclass ``schema`` with ``key=value`` overrides applied and checked."""
    _check_keys(schema, overrides)
    name = f"streamd-{schema.__module__}.{schema.__qualname__}"
    ConfigStore.instance().store(name=name, node=schema)
    try:
        with initialize(version_base=None):
            composed = compose(config_name=name, overrides=list(overrides))
        return OmegaConf.to_object(composed)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # the schema's __post_init__
        raise ConfigError(str(exc)) from None


def _describe(exc: Exception) -> str:
    """One line naming the key, from OmegaConf's error (Hydra wraps it as the cause)."""
    cause = exc.__cause__ if isinstance(exc, HydraException) and exc.__cause__ else exc
    key = getattr(cause, "full_key", None)
    message = str(cause).splitlines()[0]
    return f"{key}: {message}" if key else message
