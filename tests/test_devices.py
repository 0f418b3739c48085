"""Device and dtype selection. The NPU cases use a MOCK torch_npu: we have no Ascend hardware
(tests/test_npu_wheel.py runs the real torch_npu wheel, without the Ascend runtime)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from streamd import npu
from streamd.devices import DeviceError, parse_dtype, resolve_device
from tests.conftest import streamd_cli


@pytest.fixture(autouse=True)
def fresh_torch_npu_state():
    """Each test imports torch_npu afresh: the import is cached per process."""
    npu.load_torch_npu.cache_clear()
    yield
    npu.load_torch_npu.cache_clear()


def test_auto_falls_back_to_cpu_without_accelerators():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto") == torch.device("cpu")


def test_missing_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_missing_torch_npu_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # makes `import torch_npu` raise
    with pytest.raises(DeviceError, match="torch_npu is not installed"):
        resolve_device("npu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_device_and_dtype_are_refused():
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(DeviceError, match="unknown dtype"):
        parse_dtype("int8")
    assert parse_dtype("bf16") is torch.bfloat16


# The MOCK torch_npu: registers the 'npu' device name as the real one does and sees one NPU. It runs
# in a child process because renaming torch's privateuse1 backend cannot be undone: in the test
# process it would make every later optimizer step look for a torch.npu module.
MOCK_TORCH_NPU = """
import json, os, sys, types
import torch
torch.utils.rename_privateuse1_backend("npu")
sys.modules["torch_npu"] = types.ModuleType("torch_npu")
torch.npu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: {count})
from streamd.devices import DeviceError, resolve_device
"""


def run_with_mock_npu(body: str, count: int = 1, env: dict[str, str] | None = None) -> dict:
    """Run ``body`` beside the MOCK torch_npu in a child process; it prints one JSON object."""
    # PYTORCH_NPU_ALLOC_CONF only as the test sets it: streamd's default is under test.
    child_env = {key: value for key, value in os.environ.items() if key != "PYTORCH_NPU_ALLOC_CONF"} | (env or {})
    proc = subprocess.run([sys.executable, "-c", MOCK_TORCH_NPU.format(count=count) + body],
                          capture_output=True, text=True, env=child_env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mock_npu_sets_allocator_default_and_resolves():
    """With a MOCK torch_npu (no hardware here): allocator setting and device resolution."""
    result = run_with_mock_npu("""
try:
    resolve_device("npu:3")
    refused = None
except DeviceError as exc:
    refused = str(exc)
print(json.dumps({"npu": str(resolve_device("npu")), "auto": str(resolve_device("auto")),
                  "alloc": os.environ.get("PYTORCH_NPU_ALLOC_CONF"), "refused": refused}))
""")
    assert result["npu"] == "npu:0" and result["auto"] == "npu:0"
    assert result["alloc"] == "expandable_segments:True"
    assert result["refused"] is not None and "only 1 NPU" in result["refused"]


def test_mock_npu_keeps_a_user_allocator_setting():
    """MOCK torch_npu: a user's PYTORCH_NPU_ALLOC_CONF wins."""
    result = run_with_mock_npu("""
resolve_device("npu")
print(json.dumps({"alloc": os.environ.get("PYTORCH_NPU_ALLOC_CONF")}))
""", env={"PYTORCH_NPU_ALLOC_CONF": "max_split_size_mb:128"})
    assert result["alloc"] == "max_split_size_mb:128"


@pytest.mark.parametrize(("visible", "ids"), [
    (None, None),  # unset: npu:N is device N
    ("1", [1]),
    ("4,5", [4, 5]),
    ("1, 2,3", [1]),  # Ascend's own example: reading stops at the space
    ("1,2,-1,3", [1, 2]),  # and at an invalid ID
])
def test_ascend_visible_devices_are_read_as_the_runtime_reads_them(visible, ids):
    assert npu.visible_device_ids(visible) == ids


def test_logical_npu_indexes_name_the_visible_devices():
    assert npu.logical_devices(2, "4,5") == [{"device": "npu:0", "device_id": 4}, {"device": "npu:1", "device_id": 5}]
    assert npu.logical_devices(2, None) == [{"device": "npu:0", "device_id": 0}, {"device": "npu:1", "device_id": 1}]


def test_mock_npu_doctor_reports_the_npus_and_their_devices():
    """MOCK torch_npu seeing two NPUs: doctor's NPU part maps each npu:N to its Ascend device."""
    report = run_with_mock_npu("""
from streamd.doctor import npu_report
print(json.dumps(npu_report()))
""", count=2, env={npu.VISIBLE_DEVICES_VARIABLE: "6,7"})
    assert report["runtime_loads"] and report["problem"] is None
    assert report["devices"] == 2
    assert report["logical_devices"] == [{"device": "npu:0", "device_id": 6}, {"device": "npu:1", "device_id": 7}]


@pytest.mark.parametrize("args", [
    ("transcribe", "x.wav", "--model", "m.nemo", "--device", "tpu"),
    ("serve", "model=m.nemo", "dtype=int8"),
    ("serve", "model=m.nemo", "device=npu:x"),
], ids=["transcribe-device", "serve-dtype", "serve-device"])
def test_an_unusable_device_or_dtype_is_exit_code_2_before_any_model_loads(args):
    proc = streamd_cli(*args, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"streamd {args[0]}: unknown d" in proc.stderr  # "unknown device ..." or "unknown dtype ..."
