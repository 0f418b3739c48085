"""The ``streamd`` command line itself: ``serve --help`` and the global ``--log-level``; no model, no server."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT, streamd_cli

from streamd.config import ServeConfig, config_keys, load_config


def help_settings() -> dict[str, str]:
    """``streamd serve --help``'s settings section: key -> the default it shows."""
    proc = streamd_cli("serve", "--help", timeout=120)
    section = proc.stdout.partition("settings (KEY=VALUE, defaults shown):\n")[2]
    assert section, proc.stdout
    shown: dict[str, str] = {}
    for line in section.splitlines():
        key, equals, value = line.strip().partition("=")
        assert equals and key not in shown, line
        shown[key] = value
    return shown


def documented_defaults() -> dict[str, str]:
    """docs/server.md's settings table: key -> its default, where the default is a literal value."""
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", (ROOT / "docs" / "server.md").read_text(), re.MULTILINE)
    return dict(rows)


def test_serve_help_lists_every_key_with_its_default_as_serve_accepts_it():
    shown = help_settings()
    assert list(shown) == config_keys(ServeConfig)
    assert shown["model"] == "''"  # none named: the model shipped with streamd
    # What the help shows, given back to serve, is the default configuration: every value is the
    # default and written in the form a key=value word takes (``true``, ``[]``, ``''``).
    assert load_config(ServeConfig, [f"{key}={value}" for key, value in shown.items()]) == ServeConfig()
    documented = documented_defaults()
    assert {"port", "max_sessions", "shutdown_timeout_s"} <= set(documented)  # the table was read
    for key, value in documented.items():  # the help and the docs say the same
        from_docs = getattr(load_config(ServeConfig, ["model=m", f"{key}={value}"]), key)
        from_help = getattr(load_config(ServeConfig, ["model=m", f"{key}={shown[key]}"]), key)
        assert from_docs == from_help, (key, value, shown[key])


def test_an_unknown_log_level_is_a_usage_error_naming_the_levels(tmp_path: Path):
    proc = streamd_cli("--log-level", "verbose", "serve", "model=missing.nemo", check=False, timeout=120)
    assert proc.returncode == 2
    assert "--log-level" in proc.stderr and "'verbose'" in proc.stderr
    assert all(level in proc.stderr for level in ("debug", "info", "warning", "error"))
    assert "Traceback" not in proc.stderr
    # A known level in any case still works (the command runs).
    wav = tmp_path / "ab.wav"
    streamd_cli("--log-level", "WARNING", "tones", "ab", "--out", str(wav), timeout=120)
    assert wav.stat().st_size > 0

