"""Shared fixtures: models are built locally (never downloaded) and cached between sessions.

The tone model is trained by the real CLI (``streamd model create --arch tiny --train tones``)
once and cached under ``$STREAMD_TEST_CACHE`` (default ``~/.cache/streamd-tests``), keyed by the
hash of the code that defines it, so a change to training or synthesis retrains it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("STREAMD_TEST_CACHE", Path.home() / ".cache" / "streamd-tests"))
TONE_SEED = 0


def _code_hash(*relative: str) -> str:
    digest = hashlib.sha1()
    for rel in relative:
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()[:10]


def streamd_cli(*args: str, timeout: float = 900, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m streamd ARGS`` (in ``env``, default this process's environment) and return
    the completed process (text mode)."""
    proc = subprocess.run(
        [sys.executable, "-m", "streamd", "--log-format", "json", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"streamd {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON records of a ``--log-format json`` log (other lines, e.g. tracebacks, skipped)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _cached_model(name: str, create_args: list[str], code: tuple[str, ...]) -> Path:
    path = CACHE / f"{name}-{_code_hash(*code)}.nemo"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with path.with_suffix(".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be making it: wait for that one
            if not path.exists():
                partial = path.with_suffix(f".{os.getpid()}.partial.nemo")
                streamd_cli("model", "create", *create_args, "--out", str(partial), timeout=2400)
                partial.rename(path)
    return path


@pytest.fixture(scope="session")
def tone_model_path() -> Path:
    """A tiny model trained on the tone alphabet: it really recognizes tone sequences."""
    return _cached_model(
        f"tones-seed{TONE_SEED}",
        ["--arch", "tiny", "--train", "tones", "--seed", str(TONE_SEED)],
        ("streamd/models/training.py", "streamd/models/tones.py", "streamd/models/architectures.py"),
    )


@pytest.fixture(scope="session")
def untrained_tiny_path() -> Path:
    """An UNTRAINED tiny model: for shapes and mechanics only, never for correctness."""
    return _cached_model("untrained-tiny-seed0", ["--arch", "tiny", "--seed", "0"],
                         ("streamd/models/architectures.py",))


@pytest.fixture(scope="session")
def compat_python() -> Path:
    """The Python of a venv with other servers' own client packages (tests/compat_clients/), built
    once and cached like the models: their pins clash with the daemon's venv."""
    folder = "tests/compat_clients"
    venv = CACHE / f"compat-clients-{_code_hash(f'{folder}/requirements.txt', f'{folder}/no-deps.txt')}"
    if not (venv / "bin" / "python").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = venv.with_name(f"{venv.name}.{os.getpid()}.partial")
        subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True)
        pip = [str(partial / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(ROOT / folder / "requirements.txt")], check=True, timeout=1200)
        subprocess.run([*pip, "--no-deps", "-r", str(ROOT / folder / "no-deps.txt")], check=True, timeout=600)
        partial.rename(venv)
    return venv / "bin" / "python"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA (no system trusts it) and of a server certificate for 127.0.0.1 and
    localhost that it signed, with the certificate's key."""

    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    authority.cert_pem.write_to_path(str(files.ca))
    certificate.cert_chain_pems[0].write_to_path(str(files.cert))
    certificate.private_key_pem.write_to_path(str(files.key))
    return files


@pytest.fixture(scope="session")
def tone_model(tone_model_path: Path):
    from streamd.engine.loading import load_model

    return load_model(str(tone_model_path))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's name: fresh sequences per test, reproducible runs."""
    return np.random.default_rng(int(hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8], 16))
