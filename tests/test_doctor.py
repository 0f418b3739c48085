"""``streamd doctor`` on this machine (tests/test_npu_runtime.py runs it beside the real torch_npu
wheel; tests/test_devices.py maps a MOCK NPU's devices)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json

import torch

from streamd.doctor import format_report
from tests.conftest import streamd_cli


def test_doctor_reports_this_environment():
    proc = streamd_cli("doctor", "--json", check=False, timeout=300)
    report = json.loads(proc.stdout)
    assert report["problems"] == [], report["problems"]  # the test environment is a healthy one
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["streamd"] == importlib.metadata.version("streamd")
    assert report["torch"] == torch.__version__ and report["torch_cuda_build"] == torch.version.cuda
    assert report["nemo"] == importlib.metadata.version("nemo-toolkit") and report["nemo_imports"] is True
    assert report["cuda"]["available"] == torch.cuda.is_available()
    assert len(report["cuda"]["devices"]) == torch.cuda.device_count()
    if importlib.util.find_spec("torch_npu") is None:
        assert report["npu"]["torch_npu"] is None and report["npu"]["devices"] == 0
    assert report["auto_device"] in {"cpu", "cuda:0", "npu:0"}
    # The shipped model: the file serve and transcribe use when no model is named.
    assert report["default_model"]["exists"] and report["default_model"]["path"].endswith(".nemo")
    assert isinstance(report["shims"], list)

    lines = format_report(report).splitlines()
    assert any(line.startswith("torch ") and torch.__version__ in line for line in lines)
    assert any(line.startswith("default model ") and report["default_model"]["path"] in line for line in lines)
    assert lines[-1] == "no problems found"
