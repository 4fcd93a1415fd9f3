"""Plain-PyTorch differentiable sort: gathers and index copies per layer, autograd for the backward.

The reference for the compiled kernels and the fallback where none is available. Each layer is a set of disjoint
2x2 column mixes of the soft permutation P, applied with `index_select` / `index_copy` (O(n^2) per row and layer)
instead of diffsort's dense per-layer matrix products.

Shapes: B rows, n wires, k comparators in a layer. `P[b, item, rank]`, `sorted = x @ P`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from neco.method.sorting.relaxations import relaxation_alpha

__all__ = ["sort_reference"]


def sort_reference(
    x: Tensor,
    comparators: Tensor,
    layer_offsets: list[int],
    steepness: float,
    distribution: str = "cauchy",
    art_lambda: float = 0.25,
) -> tuple[Tensor, Tensor]:
    """Sort the rows of `x` (B, n) ascending; return (sorted (B, n), P (B, n, n)) in the dtype of the mixing.

    `comparators` is a (K, 4) int64 tensor of `(a, b, lo, hi)` rows on x's device, layer `l` being rows
    `layer_offsets[l]:layer_offsets[l + 1]`.
    """
    batch, n = x.shape
    perm = torch.eye(n, dtype=x.dtype, device=x.device).expand(batch, n, n)  # (B, item, wire)
    for start, stop in zip(layer_offsets[:-1], layer_offsets[1:]):
        if stop == start:
            continue
        ia, ib, ilo, ihi = comparators[start:stop].unbind(1)  # each (k,)
        a = x.index_select(1, ia)  # (B, k)
        b = x.index_select(1, ib)
        alpha = relaxation_alpha(distribution, b - a, steepness, art_lambda)
        beta = 1 - alpha
        x_lo = alpha * a + beta * b
        x_hi = beta * a + alpha * b
        x = x.index_copy(1, ilo, x_lo).index_copy(1, ihi, x_hi)
        pa = perm.index_select(2, ia)  # (B, n, k)
        pb = perm.index_select(2, ib)
        alpha_, beta_ = alpha.unsqueeze(1), beta.unsqueeze(1)  # (B, 1, k)
        p_lo = alpha_ * pa + beta_ * pb
        p_hi = beta_ * pa + alpha_ * pb
        perm = perm.index_copy(2, ilo, p_lo).index_copy(2, ihi, p_hi)
    return x, perm
