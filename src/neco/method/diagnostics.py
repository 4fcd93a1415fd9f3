"""Collapse diagnostics for patch features, logged beside the loss (a falling loss can hide collapse)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["effective_rank", "mean_pairwise_cosine"]


def _check(x: Tensor, name: str) -> Tensor:
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"`{name}` must be a non-empty (N, D) matrix but has shape {tuple(x.shape)}")
    # float64: the entropy of many small singular values and the sum of N*N cosines lose precision in float32
    return x.detach().to(torch.float64)


@torch.no_grad()
def effective_rank(x: Tensor) -> float:
    """exp(entropy) of the normalised singular values of (N, D) features (Roy & Vetterli 2007), in [1, min(N, D)]."""
    x = _check(x, "x")
    singular = torch.linalg.svdvals(x)
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def mean_pairwise_cosine(x: Tensor) -> float:
    """Mean cosine similarity over all pairs i != j of the N rows of (N, D) features."""
    x = _check(x, "x")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"`x` must have at least 2 rows for pairwise cosines but has {n}")
    unit = torch.nn.functional.normalize(x, dim=1)
    total = unit.sum(dim=0)
    # sum_{i,j} u_i.u_j = |sum_i u_i|^2; remove the N diagonal terms (each 1, or 0 for zero rows).
    diagonal = (unit * unit).sum()
    return float((total @ total - diagonal) / (n * (n - 1)))
