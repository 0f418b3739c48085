"""``nv_one_logger.api.config``: the base configuration object, kept only as data."""

from __future__ import annotations

from typing import Any


class OneLoggerConfig:
    """Accepts any configuration fields and stores them; nothing is exported."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)
