"""Device and dtype selection. The NPU cases use a mock torch_npu: we have no Ascend hardware."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from streamd.devices import DeviceError, parse_dtype, resolve_device


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
    with pytest.raises(DeviceError, match="torch_npu"):
        resolve_device("npu")


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
