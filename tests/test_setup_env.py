"""``setup_env.sh``'s torch choice, as a dry run (STREAMD_SETUP_DRY_RUN=1 prints the commands it
would run) on a machine whose pip has no extra configuration: PIP_CONFIG_FILE=/dev/null and no
PIP_* variables. The CPU wheel index is a loopback HTTP server here, or a closed port."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.serverproc import free_port
from tests.conftest import ROOT

TORCH = "2.13.0"


def dry_run(venv: Path, **settings: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "STREAMD_"))}
    env |= {"PIP_CONFIG_FILE": "/dev/null", "STREAMD_SETUP_DRY_RUN": "1", "STREAMD_VENV": str(venv),
            "STREAMD_TORCH_VERSION": TORCH, **settings}
    proc = subprocess.run([str(ROOT / "setup_env.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def commands(proc: subprocess.CompletedProcess) -> list[str]:
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # no request lines in the test output
        pass


@pytest.fixture(scope="module")
def cpu_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A wheel index on loopback that has a torch/ page."""
    root = tmp_path_factory.mktemp("index")
    (root / "whl" / "cpu" / "torch").mkdir(parents=True)
    (root / "whl" / "cpu" / "torch" / "index.html").write_text("<html></html>")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/whl/cpu"
    finally:
        server.shutdown()


def test_cpu_torch_comes_from_the_cpu_index(tmp_path, cpu_index):
    venv = tmp_path / "venv"
    proc = dry_run(venv, STREAMD_TORCH_INDEX=cpu_index)
    lines = commands(proc)
    assert lines[0] == f"python3 -m venv {venv}"
    assert f"{venv}/bin/python -m pip install --quiet torch=={TORCH} --index-url {cpu_index}" in lines
    # then checks that it is the CPU build
    check = lines.index(f"{venv}/bin/python -m pip install --quiet torch=={TORCH} --index-url {cpu_index}") + 1
    assert "torch.version.cuda is not None" in lines[check]
    assert not any("torch_npu" in line for line in lines)
    assert "does not answer" not in proc.stderr


def test_an_unreachable_cpu_index_falls_back_with_a_message(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/whl/cpu"
    proc = dry_run(tmp_path / "venv", STREAMD_TORCH_INDEX=closed)
    assert f"{closed}/torch/ does not answer" in proc.stderr
    assert "from pip's configured index instead" in proc.stderr
    assert f"{tmp_path}/venv/bin/python -m pip install --quiet torch=={TORCH}" in commands(proc)


def test_the_default_cpu_index_is_pytorchs(tmp_path):
    """Whether download.pytorch.org answers from here or not, it is the index tried."""
    proc = dry_run(tmp_path / "venv")
    index = "https://download.pytorch.org/whl/cpu"
    assert any(line.endswith(f"--index-url {index}") for line in commands(proc)) or f"{index}/torch/" in proc.stderr


def test_npu_adds_the_torch_npu_release_of_the_pinned_torch_and_ends_with_the_check(tmp_path, cpu_index):
    venv = tmp_path / "venv"
    lines = commands(dry_run(venv, STREAMD_TORCH="npu", STREAMD_TORCH_INDEX=cpu_index))
    assert f"{venv}/bin/python -m pip install --quiet torch=={TORCH} --index-url {cpu_index}" in lines
    assert f"{venv}/bin/python -m pip install --quiet torch=={TORCH} 'torch_npu=={TORCH}.*'" in lines
    assert lines[-1] == f"{venv}/bin/python -m streamd doctor"


def test_an_unknown_torch_kind_is_refused(tmp_path):
    env = {**os.environ, "STREAMD_TORCH": "rocm", "STREAMD_VENV": str(tmp_path / "venv")}
    proc = subprocess.run([str(ROOT / "setup_env.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "STREAMD_TORCH must be cpu, cuda, npu or skip" in proc.stderr
    assert not (tmp_path / "venv").exists()
