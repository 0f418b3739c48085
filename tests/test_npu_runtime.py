"""The REAL torch_npu wheel on a host without the Ascend runtime (CANN not installed, or its
set_env.sh not sourced): the most common Ascend set-up mistake. The wheel is installed once, with
pip, into a directory of its own beside the cached test models (never into the venv), and each
streamd process here gets it on PYTHONPATH. With the wheel installed, torch's device-backend
auto-loading makes a bare ``import torch`` fail; streamd must run on the CPU all the same, say why
it passes over the NPU, and refuse ``--device npu`` with the fix.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clients.common import Pcm, run_session
from streamd.models import tones
from streamd.serverproc import start_server
from tests.conftest import CACHE, ROOT, log_records, streamd_cli

RELEASE = torch.__version__.split("+")[0]  # torch_npu's releases follow torch's
AUTOLOAD = "TORCH_DEVICE_BACKEND_AUTOLOAD"


@pytest.fixture(scope="session")
def torch_npu_dir() -> Path:
    """The real torch_npu wheel of this torch, installed without dependencies (torch is the venv's)."""
    target = CACHE / f"torch_npu-{RELEASE}"
    if not (target / "torch_npu").is_dir():
        partial = CACHE / f"torch_npu-{RELEASE}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--retries", "1",
                        "--timeout", "60", "--target", str(partial), f"torch_npu=={RELEASE}"],
                       check=True, timeout=900)
        partial.rename(target)
    return target


@pytest.fixture
def wheel_env(torch_npu_dir: Path) -> dict[str, str]:
    """This environment with the wheel importable, and without the auto-loading setting that this
    test process got from importing streamd: each child must make that choice itself."""
    env = {key: value for key, value in os.environ.items() if key != AUTOLOAD}
    env["PYTHONPATH"] = str(torch_npu_dir)
    return env


@pytest.fixture(scope="module")
def cafe_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "cafe.wav"
    sf.write(path, tones.synthesize("cafe", np.random.default_rng(5)).audio, tones.SAMPLE_RATE)
    return path


def assert_names_cause_and_fix(text: str) -> None:
    assert "Ascend runtime" in text and "libhccl.so" in text, text  # the cause: a runtime library is missing
    assert "set_env.sh" in text, text  # the fix


def test_the_real_wheel_breaks_a_bare_import_torch(wheel_env):
    """The failure streamd works around is real: torch imports torch_npu on its own and fails."""
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=wheel_env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "torch_npu" in proc.stderr


def test_transcribe_on_the_cpu_beside_the_wheel(tone_model_path, wheel_env, cafe_wav):
    proc = streamd_cli("transcribe", str(cafe_wav), "--model", str(tone_model_path), "--device", "cpu", "--json",
                       env=wheel_env)
    assert json.loads(proc.stdout)["text"] == "c a f e"
    assert not [r for r in log_records(proc.stderr) if r["level"] == "warning" and "NPU" in r["event"]], \
        "--device cpu never looks at the NPU"


def test_serve_on_auto_falls_back_to_the_cpu_with_one_warning(tone_model_path, wheel_env, cafe_wav, tmp_path):
    """The server (engine in a process of its own: it inherits the environment) passes over the NPU
    once, saying why and how to fix it, and transcribes on the CPU."""
    server = start_server(tone_model_path, tmp_path / "server.log", env=wheel_env, engine_process=True)
    try:
        pcm = Pcm.read(str(cafe_wav))
        result = asyncio.run(run_session(server.url, pcm.config() | {"chunk_ms": 560}, pcm.replay(80, False)))
    finally:
        assert server.stop() == 0, server.log_tail()
    assert result.text == "c a f e"
    warnings = [r for r in log_records(server.log_path.read_text()) if r["level"] == "warning" and "NPU" in r["event"]]
    assert len(warnings) == 1, warnings
    assert_names_cause_and_fix(warnings[0]["reason"])


@pytest.mark.parametrize("command", [("transcribe", "{wav}", "--model", "{model}", "--device", "npu"),
                                     ("serve", "model={model}", "device=npu:0")], ids=["transcribe", "serve"])
def test_npu_is_a_clear_error(tone_model_path, wheel_env, cafe_wav, command):
    args = [part.format(wav=cafe_wav, model=tone_model_path) for part in command]
    proc = streamd_cli(*args, env=wheel_env, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert_names_cause_and_fix(proc.stderr)


def test_doctor_reports_the_missing_runtime(wheel_env):
    proc = streamd_cli("doctor", "--json", env=wheel_env, check=False, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]  # a problem was found
    report = json.loads(proc.stdout)
    assert report["npu"]["torch_npu"] == RELEASE
    assert report["npu"]["runtime_loads"] is False and report["npu"]["devices"] == 0
    assert report["npu"]["missing_library"] == "libhccl.so"
    assert report["auto_device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert report["nemo_imports"] is True
    assert len(report["problems"]) == 1
    assert_names_cause_and_fix(report["problems"][0])


def test_a_users_own_autoload_setting_is_kept():
    code = f"import os, streamd; print(os.environ['{AUTOLOAD}'])"
    env = {key: value for key, value in os.environ.items() if key != AUTOLOAD}
    unset = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    assert unset.stdout.strip() == "0"
    own = subprocess.run([sys.executable, "-c", code], env=env | {AUTOLOAD: "1"}, capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert own.stdout.strip() == "1"
