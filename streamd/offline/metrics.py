"""Numeric agreement metrics between a reference tensor and a test tensor (parity checks).

Every function takes ``(ref, test)`` torch tensors of the same shape, on any device and in any
dtype, and returns a Python float computed in float64 on the CPU, so a bfloat16 test side is
judged against the float32 reference without the metric itself losing precision.
"""

from __future__ import annotations

from typing import Literal

import torch


def _as_pair(ref: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if ref.shape != test.shape:
        raise ValueError(f"shape mismatch: ref {tuple(ref.shape)} vs test {tuple(test.shape)}")
    return ref.detach().to("cpu", torch.float64), test.detach().to("cpu", torch.float64)


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` where an all-zero reference gives 0 (equal) or inf (not)."""
    if denominator == 0.0:
        return 0.0 if numerator == 0.0 else float("inf")
    return numerator / denominator


def relative_error(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Frobenius relative error ``||test - ref|| / ||ref||`` over the whole tensor."""
    ref64, test64 = _as_pair(ref, test)
    return _ratio(torch.linalg.vector_norm(test64 - ref64).item(), torch.linalg.vector_norm(ref64).item())


def masked_relative_error(
    ref: torch.Tensor, test: torch.Tensor, min_abs: float = 0.1, reduce: Literal["mean", "max"] = "mean"
) -> float:
    """Element-wise ``|test - ref| / |ref|`` over the elements where ``|ref| >= min_abs``, reduced.

    Near-zero reference elements are left out because their relative error is meaningless
    (any rounding is an arbitrarily large fraction of them). Returns 0.0 when no element qualifies.
    """
    ref64, test64 = _as_pair(ref, test)
    mask = ref64.abs() >= min_abs
    if not bool(mask.any()):
        return 0.0
    errors = (test64[mask] - ref64[mask]).abs() / ref64[mask].abs()
    return (errors.mean() if reduce == "mean" else errors.max()).item()


def cosine_similarity(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Cosine of the angle between the two tensors flattened to vectors (1.0 = same direction)."""
    ref64, test64 = _as_pair(ref, test)
    norms = torch.linalg.vector_norm(ref64) * torch.linalg.vector_norm(test64)
    if norms.item() == 0.0:
        return 1.0 if torch.equal(ref64, test64) else 0.0
    return (torch.dot(ref64.flatten(), test64.flatten()) / norms).item()


def max_abs_diff(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Largest element-wise ``|test - ref|``."""
    ref64, test64 = _as_pair(ref, test)
    return (test64 - ref64).abs().max().item() if ref64.numel() else 0.0


def mean_abs_diff(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Mean element-wise ``|test - ref|``."""
    ref64, test64 = _as_pair(ref, test)
    return (test64 - ref64).abs().mean().item() if ref64.numel() else 0.0


def share_within(ref: torch.Tensor, test: torch.Tensor, rtol: float, atol: float = 0.0) -> float:
    """Fraction of elements with ``|test - ref| <= atol + rtol * |ref|`` (1.0 = all of them)."""
    ref64, test64 = _as_pair(ref, test)
    if not ref64.numel():
        return 1.0
    return ((test64 - ref64).abs() <= atol + rtol * ref64.abs()).double().mean().item()
