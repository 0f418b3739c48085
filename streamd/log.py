"""structlog set-up: JSON lines in production, readable key=value output on a TTY."""

from __future__ import annotations

import logging
import sys

import structlog

_settings = ("info", "auto")  # what configure_logging was last given



def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Route structlog and the standard ``logging`` module (NeMo uses it) to stderr.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console when stderr is a TTY, else JSON).
    """
    global _settings
    _settings = (level, fmt)
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs every failed handshake at error level with a traceback; our own
    # session events say what matters.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))


def logging_settings() -> tuple[str, str]:
    """``(level, fmt)`` as last configured: for a child process to log the same way."""
    return _settings


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger; works before :func:`configure_logging` too (stdlib defaults)."""
    return structlog.stdlib.get_logger(name)
