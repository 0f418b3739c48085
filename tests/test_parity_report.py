"""Parity metrics on hand-computed tensors, and the check/report plumbing."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from streamd.offline import metrics
from streamd.offline.report import Check, Comparison, SideResult, SideSpec, emit_report, run_checks

REF = torch.tensor([3.0, 4.0, 0.05, 0.0])
TEST = torch.tensor([3.0, 4.5, 0.10, 0.0])


def test_relative_error_is_the_frobenius_ratio() -> None:
    # ||test - ref|| = sqrt(0.5^2 + 0.05^2); ||ref|| = sqrt(9 + 16 + 0.0025)
    assert metrics.relative_error(REF, TEST) == pytest.approx(math.sqrt(0.2525) / math.sqrt(25.0025))
    assert metrics.relative_error(REF, REF.clone()) == 0.0
    assert metrics.relative_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert metrics.relative_error(torch.zeros(3), torch.ones(3)) == math.inf


def test_masked_relative_error_ignores_small_reference_elements() -> None:
    # Only 3.0 and 4.0 have |ref| >= 0.1: element errors 0 and 0.125. The 0.05 -> 0.10 element
    # (100 % off) would dominate if it were not masked.
    assert metrics.masked_relative_error(REF, TEST, min_abs=0.1) == pytest.approx(0.0625)
    assert metrics.masked_relative_error(REF, TEST, min_abs=0.1, reduce="max") == pytest.approx(0.125)
    assert metrics.masked_relative_error(REF, TEST, min_abs=0.01, reduce="max") == pytest.approx(1.0)
    assert metrics.masked_relative_error(REF, TEST, min_abs=100.0) == 0.0


def test_cosine_similarity() -> None:
    def cosine(a: list, b: list) -> float:
        return metrics.cosine_similarity(torch.tensor(a), torch.tensor(b))

    assert cosine([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    assert cosine([1.0, 2.0], [2.0, 4.0]) == pytest.approx(1.0)
    assert cosine([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0)
    # Shape is flattened: a (2, 2) tensor is compared as a 4-vector.
    assert cosine([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]) == pytest.approx(1 / math.sqrt(2))


def test_abs_diffs_and_share_within() -> None:
    assert metrics.max_abs_diff(REF, TEST) == pytest.approx(0.5)
    assert metrics.mean_abs_diff(REF, TEST) == pytest.approx(0.55 / 4)
    # |diff| <= rtol * |ref|: 3.0 (exact) and 0.0 (exact) pass; 4.0 is 12.5 % off, 0.05 is 100 % off.
    assert metrics.share_within(REF, TEST, rtol=0.01) == pytest.approx(0.5)
    assert metrics.share_within(REF, TEST, rtol=0.2) == pytest.approx(0.75)
    assert metrics.share_within(REF, TEST, rtol=0.0, atol=0.5) == pytest.approx(1.0)


def test_metrics_accept_low_precision_and_reject_shape_mismatch() -> None:
    ref = torch.linspace(-2, 2, 64)
    test = ref.to(torch.bfloat16)
    error = metrics.relative_error(ref, test)
    assert 0 < error < 2**-8  # bfloat16 keeps 8 significant bits
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.relative_error(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize(
    "value, op, threshold, passed",
    [(0.5, "<", 1.0, True), (1.0, "<", 1.0, False), (1.0, "<=", 1.0, True), (2.0, ">", 1.0, True),
     (0.0, "==", 0.0, True), (1.0, "==", 0.0, False), (math.nan, "<", 1.0, False),
     (math.nan, ">", 1.0, False)],
)
def test_check_passes_when_value_meets_threshold(
    value: float, op: str, threshold: float, passed: bool
) -> None:
    check = Check("x", value, op, threshold)
    assert check.passed is passed
    assert check.to_dict()["passed"] is passed


def test_check_rejects_unknown_operator() -> None:
    with pytest.raises(ValueError, match="unknown operator"):
        Check("x", 1.0, "~", 1.0)


def test_side_spec_parse() -> None:
    assert SideSpec.parse("device=cuda:1,dtype=bfloat16") == SideSpec("cuda:1", "bfloat16")
    assert SideSpec.parse("dtype=float16") == SideSpec("cpu", "float16")
    with pytest.raises(ValueError, match="bad side spec"):
        SideSpec.parse("gpu=1")


def test_run_checks_and_emit_report(tmp_path: Path) -> None:
    """A toy mode: each side 'computes' a tensor; the report fails exactly when a check fails."""
    seen: list[SideSpec] = []

    def run_side(side: SideSpec) -> SideResult:
        seen.append(side)
        value = torch.ones(4) * (1.0 if side.dtype == "float32" else 1.02)
        return SideResult({"clip.wav": value}, {"mean_s": 0.5})

    def compare(ref: SideResult, test: SideResult) -> Comparison:
        error = metrics.relative_error(ref.outputs["clip.wav"], test.outputs["clip.wav"])
        return Comparison([Check("rel_err", error, "<", 0.01, "clip.wav")], {"clip.wav": {"max_abs": 0.02}})

    ref, test = SideSpec("cpu", "float32"), SideSpec("cpu", "bfloat16")
    report = run_checks("toy", "model-dir", ref, test, run_side, compare)
    assert seen == [ref, test]
    stream = io.StringIO()
    assert emit_report(report, tmp_path / "r.json", stream) == 1
    table = stream.getvalue()
    assert "rel_err" in table and "FAIL" in table
    assert "cpu/float32 vs cpu/bfloat16: FAILED (1 checks)" in table
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["passed"] is False
    assert saved["checks"] == [{"name": "rel_err", "value": pytest.approx(0.02), "op": "<", "threshold": 0.01,
                                "subject": "clip.wav", "passed": False}]
    assert saved["timing"] == {"ref": {"mean_s": 0.5}, "test": {"mean_s": 0.5}}
    assert saved["ref"] == {"device": "cpu", "dtype": "float32"}

    same = run_checks("toy", "model-dir", ref, ref, run_side, compare)
    assert emit_report(same, None, io.StringIO()) == 0
