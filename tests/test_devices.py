"""Device and dtype selection. The NPU cases use a MOCK torch_npu: we have no Ascend hardware
(tests/test_npu_wheel.py runs the real torch_npu wheel, without the Ascend runtime)."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from streamd import npu
from streamd.devices import DeviceError, parse_dtype, resolve_device
from tests.conftest import streamd_cli


@pytest.fixture(autouse=True)
def fresh_torch_npu_state():
    """Each test imports torch_npu (or its mock) afresh: the import is cached per process."""
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


@pytest.fixture
def mock_torch_npu(monkeypatch):
    """A MOCK torch_npu: registers the 'npu' device name as the real one does, sees one NPU."""
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 1),
                        raising=False)


def test_mock_npu_sets_allocator_default_and_resolves(monkeypatch, mock_torch_npu):
    """With a MOCK torch_npu (no hardware here): allocator setting and device resolution."""
    monkeypatch.delenv("PYTORCH_NPU_ALLOC_CONF", raising=False)
    assert resolve_device("npu") == torch.device("npu", 0)
    assert os.environ["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:True"
    assert resolve_device("auto").type == "npu"
    with pytest.raises(DeviceError, match="only 1 NPU"):
        resolve_device("npu:3")


def test_mock_npu_keeps_a_user_allocator_setting(monkeypatch, mock_torch_npu):
    """MOCK torch_npu: a user's PYTORCH_NPU_ALLOC_CONF wins."""
    monkeypatch.setenv("PYTORCH_NPU_ALLOC_CONF", "max_split_size_mb:128")
    resolve_device("npu")
    assert os.environ["PYTORCH_NPU_ALLOC_CONF"] == "max_split_size_mb:128"


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


def test_mock_npu_doctor_reports_the_npus_and_their_devices(monkeypatch, mock_torch_npu):
    """MOCK torch_npu seeing two NPUs: doctor's NPU part maps each npu:N to its Ascend device."""
    from streamd.doctor import npu_report

    monkeypatch.setattr(torch.npu, "device_count", lambda: 2)
    monkeypatch.setenv(npu.VISIBLE_DEVICES_VARIABLE, "6,7")
    report = npu_report()
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
