"""``streamd serve`` settings: key=value overrides into ServeConfig, with clear errors."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import streamd_cli

from streamd.config import ConfigError, ServeConfig, load_config


def test_defaults_and_overrides():
    config = load_config(ServeConfig, ["model=m.nemo", "port=9000", "idle_timeout_s=2.5", "host=0.0.0.0"])
    expected = dataclasses.replace(ServeConfig(model="m.nemo"), port=9000, idle_timeout_s=2.5, host="0.0.0.0")
    assert config == expected
    assert (config.max_sessions, config.default_chunk_ms, config.threads) == (64, 1120, 1)


@pytest.mark.parametrize("overrides, message", [
    (["model=m", "prot=9000"], "unknown key 'prot'; valid keys: model, host, port"),
    (["model=m", "+extra=1"], "unknown key 'extra'"),
    (["model=m", "port=http"], "port: Value 'http'"),
    (["model=m", "port=70000"], "port must be between 0 and 65535"),
    (["model=m", "vosk_port=-1"], "vosk_port must be between 0 and 65535"),
    (["model=m", "port=9000", "sherpa_port=9000"],
     "port, whisperlive_port, vosk_port, sherpa_port, metrics_port must differ"),
    (["model=m", "max_sessions=0"], "max_sessions must be at least 1"),
    (["model=m", "idle_timeout_s=0"], "idle_timeout_s must be positive"),
    (["model=m", "warmup_batch=-1"], "warmup_batch must be 0"),
    (["model=m", "batch_window_ms=-5"], "batch_window_ms must be 0"),
    (["model=m", "port"], "use key=value"),
])
def test_bad_settings_name_the_key(overrides: list[str], message: str):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        load_config(ServeConfig, overrides)


def test_serve_refuses_unknown_keys_before_loading_anything():
    proc = streamd_cli("serve", "model=missing.nemo", "max_session=5", check=False, timeout=120)
    assert proc.returncode == 2
    assert "unknown key 'max_session'" in proc.stderr and "max_session_s" in proc.stderr
    assert "Traceback" not in proc.stderr
