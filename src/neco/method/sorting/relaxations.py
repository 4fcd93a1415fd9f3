"""Relaxed comparators: alpha = f(b - a), the weight a comparator gives wire `a` in the minimum.

The formulas follow `diffsort` 0.2.0 operation by operation (same constants, same order) so the plain-PyTorch
path reproduces its numbers; the compiled kernels implement the same formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["RELAXATIONS", "relaxation_alpha"]


def _cauchy(diff: Tensor, steepness: float, art_lambda: float) -> Tensor:
    return 1 / math.pi * torch.atan(steepness * diff) + 0.5


def _logistic(diff: Tensor, steepness: float, art_lambda: float) -> Tensor:
    return torch.sigmoid(diff * steepness)


def _logistic_phi(diff: Tensor, steepness: float, art_lambda: float) -> Tensor:
    return torch.sigmoid(diff * steepness / (diff.abs() + 1e-10).pow(art_lambda))


def _gaussian(diff: Tensor, steepness: float, art_lambda: float) -> Tensor:
    # Normal CDF with sigma = 1 / steepness.
    return 0.5 + 0.5 * torch.erf(diff / (1 / steepness) / math.sqrt(2))


def _reciprocal(diff: Tensor, steepness: float, art_lambda: float) -> Tensor:
    v = steepness * diff
    return 0.5 * (v / (2 + v.abs()) + 1)


def _optimal(diff: Tensor, steepness: float, art_lambda: float) -> Tensor:
    v = steepness * diff
    tails = (v > 0.25).to(v.dtype) - (v < -0.25).to(v.dtype)
    return torch.clamp(v, -0.25, 0.25) + 0.5 + tails * (0.25 - 1 / 16 / (v.abs() + 1e-10))


RELAXATIONS: dict[str, Callable[[Tensor, float, float], Tensor]] = {
    "cauchy": _cauchy,
    "logistic": _logistic,
    "logistic_phi": _logistic_phi,
    "gaussian": _gaussian,
    "reciprocal": _reciprocal,
    "optimal": _optimal,
}


def relaxation_alpha(distribution: str, diff: Tensor, steepness: float, art_lambda: float = 0.25) -> Tensor:
    """Return alpha = f(diff) for relaxation `distribution`, where diff = b - a."""
    if distribution not in RELAXATIONS:
        raise ValueError(f"`distribution` must be one of {sorted(RELAXATIONS)} but is {distribution!r}")
    return RELAXATIONS[distribution](diff, steepness, art_lambda)
