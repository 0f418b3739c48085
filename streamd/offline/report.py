"""Parity run plumbing shared by every mode: side specs, checks, timing, table and JSON report.

A mode supplies two functions and :func:`run_checks` does the rest::

    run_side(side: SideSpec) -> SideResult      # load on side.device/side.dtype, run every input
    compare(ref: SideResult, test: SideResult) -> Comparison   # metrics and thresholded checks

then :func:`emit_report` prints the table, writes the JSON and returns the exit code (0 or 1).
"""

from __future__ import annotations

import json
import math
import operator
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from streamd.devices import synchronize

OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
}


def require_model_dir(path: str, kind: str) -> None:
    """A transformers model must be a local directory (nothing is downloaded): say so plainly,
    instead of the hub client's complaint about repository names."""
    if not Path(path).is_dir():
        raise ValueError(f"{path}: not a directory (a local transformers {kind} model directory is needed; "
                         "models are never downloaded)")


@dataclass(frozen=True)
class Check:
    """One thresholded comparison: passes when ``value <op> threshold`` holds (NaN never passes)."""

    name: str
    value: float
    op: str
    threshold: float
    subject: str = ""  # what the check is about, e.g. the audio file; "" for whole-run checks

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"check {self.name!r}: unknown operator {self.op!r} (use {', '.join(OPS)})")

    @property
    def passed(self) -> bool:
        return bool(OPS[self.op](self.value, self.threshold))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class SideSpec:
    """Where and in which precision one side runs, parsed from ``device=cuda:0,dtype=bfloat16``."""

    device: str = "cpu"
    dtype: str = "float32"

    @classmethod
    def parse(cls, text: str) -> SideSpec:
        fields: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in ("device", "dtype"):
                raise ValueError(f"bad side spec {text!r}: expected device=D,dtype=T")
            fields[key.strip()] = value.strip()
        return cls(**fields)

    @property
    def label(self) -> str:
        return f"{self.device}/{self.dtype}"


@dataclass
class SideResult:
    """What one side produced: per-subject outputs for the comparator, and its timings."""

    outputs: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)


@dataclass
class Comparison:
    """A comparator's verdict: thresholded checks plus informational per-subject metrics."""

    checks: list[Check]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class ParityReport:
    """Everything a parity run found; ``passed`` is true only when every check passed."""

    mode: str
    model: str
    ref: SideSpec
    test: SideSpec
    checks: list[Check]
    metrics: dict[str, dict[str, float]]
    timing: dict[str, dict[str, float]]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.model,
            "ref": asdict(self.ref),
            "test": asdict(self.test),
            "passed": self.passed,
            "checks": [check.to_dict() for check in self.checks],
            "metrics": self.metrics,
            "timing": self.timing,
        }


def timed_mean(fn: Callable[[], object], device: torch.device, warmup: int, runs: int) -> float:
    """Mean wall seconds of ``fn`` over ``runs`` calls after ``warmup`` untimed ones (device-synced)."""
    if runs < 1:
        raise ValueError("timing needs at least one run")
    for _ in range(warmup):
        fn()
    synchronize(device)
    total = 0.0
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        total += time.perf_counter() - start
    return total / runs


def run_checks(
    mode: str,
    model: str,
    ref: SideSpec,
    test: SideSpec,
    run_side: Callable[[SideSpec], SideResult],
    compare: Callable[[SideResult, SideResult], Comparison],
) -> ParityReport:
    """Run the reference side, then the test side (one model in memory at a time), then compare."""
    ref_result = run_side(ref)
    test_result = run_side(test)
    comparison = compare(ref_result, test_result)
    return ParityReport(
        mode=mode, model=model, ref=ref, test=test, checks=comparison.checks, metrics=comparison.metrics,
        timing={"ref": ref_result.timing, "test": test_result.timing},
    )


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def format_table(report: ParityReport) -> str:
    """A fixed-width text table of checks, metrics and timings, ending in the overall verdict."""
    rows = [("check", "subject", "value", "threshold", "result")]
    rows += [(c.name, c.subject, _fmt(c.value), f"{c.op} {_fmt(c.threshold)}", "PASS" if c.passed else "FAIL")
             for c in report.checks]
    rows += [(name, subject, _fmt(value), "", "info")
             for subject, metrics in report.metrics.items() for name, value in metrics.items()]
    rows += [(name, f"{side}: {getattr(report, side).label}", _fmt(value), "", "timing")
             for side, timing in report.timing.items() for name, value in timing.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    verdict = "PASSED" if report.passed else f"FAILED ({sum(not c.passed for c in report.checks)} checks)"
    lines.append(f"parity {report.mode}: {report.ref.label} vs {report.test.label}: {verdict}")
    return "\n".join(lines)


def write_report(report: ParityReport, path: str | Path) -> None:
    """Write the report as JSON (non-finite values as JSON's NaN/Infinity extensions)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def emit_report(report: ParityReport, out: str | Path | None, stream: TextIO = sys.stdout) -> int:
    """Print the table, write the JSON when ``out`` is given; return 0 if all checks passed, else 1."""
    print(format_table(report), file=stream)
    if out is not None:
        write_report(report, out)
    return 0 if report.passed else 1
