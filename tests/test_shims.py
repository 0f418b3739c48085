"""Import-time shims, each in a fresh interpreter: NeMo imports and streams one step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.make_triton import make_triton

# Imports NeMo through streamd, runs one streaming step on an untrained model, and prints what
# the shims did and which modules are live.
PROBE = r"""
import json, sys
# torch's inductor probes triton's internals (far beyond what NeMo uses) on first import; let it
# finish before the fake package becomes visible: the shims are about NeMo's import.
import torch._functorch.aot_autograd
sys.path[:0] = [p for p in sys.argv[2:] if p]
import numpy as np
from streamd.shims import apply_shims
from streamd.engine.loading import load_model
from streamd.engine.engine import StreamingEngine
model = load_model(sys.argv[1])
engine = StreamingEngine(model, max_streams=1)
sid = engine.open_stream()
engine.push_audio(sid, np.zeros(16000, np.float32)); engine.end_stream(sid)
updates = engine.step()
result = {"applied": apply_shims(), "finished": any(u.finished for u in updates)}
for name in ("triton", "nv_one_logger", "streamd"):
    module = sys.modules.get(name)
    result[name] = str(getattr(module, "__file__", None) or list(getattr(module, "__path__", []))) if module else None
if "triton" in sys.modules:
    import triton.runtime.driver as d
    result["triton_active_driver"] = repr(d.driver.active)
print("PROBE " + json.dumps(result))
"""


def run_probe(model: Path, pythonpath: list[Path]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(model), *map(str, pythonpath)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(text for text in proc.stdout.splitlines() if text.startswith("PROBE "))
    return json.loads(line.removeprefix("PROBE ")) | {"log": proc.stdout + proc.stderr}


def test_broken_triton_is_patched_in_memory(untrained_tiny_path, tmp_path):
    fake = make_triton(tmp_path, broken=True)
    before = {p: p.read_text() for p in (fake / "triton").rglob("*.py")}
    result = run_probe(untrained_tiny_path, [fake])
    assert result["finished"]
    assert result["triton"].startswith(str(fake)), "the fake triton must be the one imported"
    assert any("skip backends" in a for a in result["applied"])
    assert any("no active driver" in a for a in result["applied"])
    assert result["triton_active_driver"] == "None"
    assert "shims applied" in result["log"]
    assert {p: p.read_text() for p in (fake / "triton").rglob("*.py")} == before, "no file may be edited"


def test_healthy_triton_is_left_alone(untrained_tiny_path, tmp_path):
    fake = make_triton(tmp_path, broken=False)
    result = run_probe(untrained_tiny_path, [fake])
    assert result["finished"]
    assert not any("triton" in a for a in result["applied"])
    assert "Driver object" in result["triton_active_driver"]


def test_missing_nv_one_logger_is_mocked(untrained_tiny_path, tmp_path):
    blocker = tmp_path / "block" / "nv_one_logger"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('nv_one_logger is not installed here')\n")
    result = run_probe(untrained_tiny_path, [blocker.parent])
    assert result["finished"]
    assert "nv_one_logger: mock package" in result["applied"]
    assert "mocks" in result["nv_one_logger"]


def test_real_nv_one_logger_is_not_replaced(untrained_tiny_path):
    pytest.importorskip("nv_one_logger", reason="this environment has no real nv_one_logger to keep")
    result = run_probe(untrained_tiny_path, [])
    assert result["finished"]
    assert not any("nv_one_logger" in a for a in result["applied"])
    assert "mocks" not in result["nv_one_logger"]


# NeMo's run_nvrtc as the CUDA-graph decoder calls it, with a fake cuda-python (no GPU here);
# prints what the shim did, what the interpreter's shared b" " holds afterwards, and what
# websockets' HTTP parser makes of a request then.
NVRTC_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from streamd.patches import nemo_nvrtc
applied = nemo_nvrtc.apply() if sys.argv[2] == "shim" else []
from nemo.core.utils.cuda_python_utils import run_nvrtc
kernel = run_nvrtc("extern \"C\" __global__ void k() {}", b"k", b"k.cu")
from websockets.http11 import Request
from websockets.streams import StreamReader
reader = StreamReader()
reader.feed_data(b"GET /readyz HTTP/1.1\r\nHost: streamd\r\n\r\n")
try:
    next(Request.parse(reader.read_line))
    request = "incomplete"
except StopIteration as parsed:
    request = parsed.value.path
except ValueError as exc:
    request = str(exc)
print("PROBE " + json.dumps({"applied": applied, "kernel": kernel, "space": list(b" "), "request": request}))
"""


@pytest.mark.parametrize("shim", ["shim", "none"])
def test_nvrtc_shim_keeps_the_shared_space_byte_intact_with_a_fake_cuda_python(shim: str, tmp_path: Path):
    fake = Path(__file__).parent / "fakes" / "cuda_python"
    # Every module compiled from its source, as where no .pyc files are written (the GPU image:
    # PYTHONDONTWRITEBYTECODE, pip --no-compile): only then is NeMo's b" " the interpreter's shared
    # object (a constant read from a .pyc is a private copy).
    env = os.environ | {"PYTHONPYCACHEPREFIX": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", NVRTC_PROBE, str(fake), shim], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(t for t in proc.stdout.splitlines() if t.startswith("PROBE ")).removeprefix("PROBE "))
    assert result["kernel"] == "kernel k"
    if shim == "shim":
        assert result["applied"] == ["nemo run_nvrtc: program log into a private buffer"]
        assert (result["space"], result["request"]) == ([32], "/readyz")
    else:  # NeMo's own run_nvrtc: the bug the shim exists for, as the server met it on a GPU
        assert (result["space"], result["request"]) == ([0], "invalid HTTP request line: GET /readyz HTTP/1.1")
