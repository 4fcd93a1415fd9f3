"""`DiffSort`: relaxed sorting network returning the sorted values and the soft permutation matrix."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neco.method.sorting import backends
from neco.method.sorting.networks import build_network
from neco.method.sorting.relaxations import RELAXATIONS
from neco.utils.logging import log_once

__all__ = ["DiffSort"]

_REDUCED = (torch.float16, torch.bfloat16)


class DiffSort(nn.Module):
    """Differentiable sorting network with diffsort 0.2.0 semantics and a fast kernel when one is available.

    `forward(x)` sorts each row of `x` (B, n) ascending and returns `(sorted (B, n), P (B, n, n))` with
    `sorted = x @ P` and `P[b, item, rank]` the mass of `x[b, item]` at rank `rank` (doubly stochastic).

    Args:
        network: "bitonic" (any n, padded to a power of two with pass-through wires) or "odd_even".
        size: number of values per row, n.
        steepness: inverse temperature s of the relaxation; larger is closer to a hard sort.
        distribution: relaxation f in alpha = f(s * (b - a)): one of `RELAXATIONS`.
        art_lambda: exponent of the "logistic_phi" relaxation (diffsort's name).
        backend: "auto" (compiled kernel for the input's device, else reference), "reference", "cpu" or
            "triton".

    Float16 / bfloat16 inputs are mixed in float32 and the outputs cast back to the input dtype.
    """

    def __init__(
        self,
        network: str = "bitonic",
        size: int = 49,
        steepness: float = 10.0,
        distribution: str = "cauchy",
        *,
        art_lambda: float = 0.25,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if distribution not in RELAXATIONS:
            raise ValueError(f"`distribution` must be one of {sorted(RELAXATIONS)} but is {distribution!r}")
        if backend not in backends.BACKENDS:
            raise ValueError(f"`backend` must be one of {sorted(backends.BACKENDS)} but is {backend!r}")
        if not steepness > 0:
            raise ValueError(f"`steepness` must be > 0 but is {steepness!r}")
        layers = build_network(network, size)
        self.network = network
        self.size = size
        self.steepness = float(steepness)
        self.distribution = distribution
        self.art_lambda = float(art_lambda)
        self.backend = backend
        offsets = [0]
        for layer in layers:
            offsets.append(offsets[-1] + len(layer))
        self.layer_offsets: list[int] = offsets
        flat = [comparator for layer in layers for comparator in layer]
        comparators = torch.tensor(flat, dtype=torch.int64).reshape(len(flat), 4)  # (K, 4): a, b, lo, hi
        self.register_buffer("comparators", comparators, persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int32), persistent=False)

    @property
    def num_layers(self) -> int:
        """Number of layers of the network (bitonic n=49: 21, odd_even: n)."""
        return len(self.layer_offsets) - 1

    def extra_repr(self) -> str:
        return (
            f"network={self.network!r}, size={self.size}, steepness={self.steepness}, "
            f"distribution={self.distribution!r}, backend={self.backend!r}"
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Sort rows of `x` (B, n); return (sorted (B, n), P (B, n, n))."""
        if x.dim() != 2 or x.shape[1] != self.size:
            raise ValueError(f"`x` must have shape (B, {self.size}) but has shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"`x` must be a floating-point tensor but has dtype {x.dtype}")
        in_dtype = x.dtype
        if in_dtype in _REDUCED:
            x = x.float()
        name, fn = backends.select(self.backend, x)
        log_once(
            f"DiffSort: {name} path on {x.device.type} ({self.network}, n={self.size}, {self.distribution})"
        )
        values, perm = fn(
            x,
            self.comparators,
            self.offsets,
            self.layer_offsets,
            self.steepness,
            self.distribution,
            self.art_lambda,
        )
        if in_dtype in _REDUCED:
            values, perm = values.to(in_dtype), perm.to(in_dtype)
        return values, perm
