"""Triton forward kernel for CUDA: one program per row, the row's P tile and values held in registers.

Each layer is described per wire (partner wire, whether the wire is the comparator's `a` input, whether it
receives the minimum); a layer is two register gathers and a few elementwise ops. Only the input rows are kept
for backward; the backward recomputes the sort with the PyTorch reference path under autograd (same numbers,
the reference's speed). Runs on the CPU under `TRITON_INTERPRET=1` for tests.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from neco.method.sorting.reference import sort_reference

__all__ = ["sort_triton", "layer_tables"]

_KINDS = {"cauchy": 0, "logistic": 1, "logistic_phi": 2, "gaussian": 3, "reciprocal": 4, "optimal": 5}

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except Exception:  # pragma: no cover - Triton missing: the backend reports itself unavailable
    triton = None


def layer_tables(comparators: Tensor, layer_offsets: list[int], width: int) -> tuple[Tensor, Tensor]:
    """Per-layer, per-wire tables: partner wire (L, width) and flags (L, width): 1 active, 2 is `a`, 4 gets min."""
    num_layers = len(layer_offsets) - 1
    partner = torch.arange(width, dtype=torch.int32).repeat(max(num_layers, 1), 1)
    flags = torch.zeros(max(num_layers, 1), width, dtype=torch.int32)
    rows = comparators.tolist()
    for layer, (start, stop) in enumerate(zip(layer_offsets[:-1], layer_offsets[1:])):
        for a, b, lo, _hi in rows[start:stop]:
            partner[layer, a], partner[layer, b] = b, a
            flags[layer, a] = 1 | 2 | (4 if lo == a else 0)
            flags[layer, b] = 1 | (4 if lo == b else 0)
    return partner, flags


if triton is not None:

    @triton.jit
    def _atan_portable(v):
        # atan from elementary ops for the Triton interpreter, which has no libdevice (about 1e-7 accurate).
        t = tl.abs(v)
        big = t > 1.0
        t = tl.where(big, 1.0 / tl.maximum(t, 1e-30), t)
        mid = t > 0.41421356237309503
        u = tl.where(mid, (t - 1.0) / (t + 1.0), t)
        u2 = u * u
        poly = 1.0 / 23.0
        for k in tl.static_range(10, -1, -1):
            poly = (1.0 / (2 * k + 1)) - u2 * poly
        r = u * poly + tl.where(mid, 0.7853981633974483, 0.0)
        r = tl.where(big, 1.5707963267948966 - r, r)
        return tl.where(v < 0, -r, r)

    @triton.jit
    def _alpha(d, s, lam, KIND: tl.constexpr, LIBDEVICE: tl.constexpr):
        if KIND == 0:
            if LIBDEVICE:
                alpha = 0.3183098861837907 * libdevice.atan(s * d) + 0.5
            else:
                alpha = 0.3183098861837907 * _atan_portable(s * d) + 0.5
        elif KIND == 1:
            alpha = 1.0 / (1.0 + tl.exp(-(d * s)))
        elif KIND == 2:
            u = d * s / tl.exp(lam * tl.log(tl.abs(d) + 1e-10))
            alpha = 1.0 / (1.0 + tl.exp(-u))
        elif KIND == 3:
            alpha = 0.5 + 0.5 * tl.math.erf(d * s / 1.4142135623730951)
        elif KIND == 4:
            v = s * d
            alpha = 0.5 * (v / (2.0 + tl.abs(v)) + 1.0)
        else:
            v = s * d
            tails = (v > 0.25).to(tl.float32) - (v < -0.25).to(tl.float32)
            alpha = (
                tl.minimum(tl.maximum(v, -0.25), 0.25) + 0.5 + tails * (0.25 - 0.0625 / (tl.abs(v) + 1e-10))
            )
        return alpha

    @triton.jit
    def _sort_kernel(
        x_ptr,
        values_ptr,
        perm_ptr,
        partner_ptr,
        flags_ptr,
        n,
        num_layers,
        s,
        lam,
        WIDTH: tl.constexpr,
        KIND: tl.constexpr,
        LIBDEVICE: tl.constexpr,
    ):
        row = tl.program_id(0)
        wires = tl.arange(0, WIDTH)
        items = tl.arange(0, WIDTH)
        valid = wires < n
        xs = tl.load(x_ptr + row * n + wires, mask=valid, other=0.0).to(tl.float32)
        tile = (items[:, None] == wires[None, :]).to(tl.float32)  # (item, wire), identity
        for layer in range(num_layers):
            partner = tl.load(partner_ptr + layer * WIDTH + wires)
            flags = tl.load(flags_ptr + layer * WIDTH + wires)
            active = (flags & 1) != 0
            is_a = (flags & 2) != 0
            is_lo = (flags & 4) != 0
            other = tl.gather(xs, partner, 0)
            va = tl.where(is_a, xs, other)
            vb = tl.where(is_a, other, xs)
            alpha = _alpha(vb - va, s, lam, KIND, LIBDEVICE)
            beta = 1.0 - alpha
            new_x = tl.where(is_lo, alpha * va + beta * vb, beta * va + alpha * vb)
            xs = tl.where(active, new_x, xs)
            other_cols = tl.gather(tile, tl.broadcast_to(partner[None, :], (WIDTH, WIDTH)), 1)
            ta = tl.where(is_a[None, :], tile, other_cols)
            tb = tl.where(is_a[None, :], other_cols, tile)
            a2, b2 = alpha[None, :], beta[None, :]
            new_tile = tl.where(is_lo[None, :], a2 * ta + b2 * tb, b2 * ta + a2 * tb)
            tile = tl.where(active[None, :], new_tile, tile)
        tl.store(values_ptr + row * n + wires, xs, mask=valid)
        mask2 = (items[:, None] < n) & valid[None, :]
        tl.store(perm_ptr + row * n * n + items[:, None] * n + wires[None, :], tile, mask=mask2)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _forward(
    x: Tensor, partner: Tensor, flags: Tensor, num_layers: int, steepness: float, kind: int, lam: float
):
    batch, n = x.shape
    width = max(triton.next_power_of_2(n), 2)
    values = torch.empty(batch, n, dtype=torch.float32, device=x.device)
    perm = torch.empty(batch, n, n, dtype=torch.float32, device=x.device)
    if batch > 0:
        _sort_kernel[(batch,)](
            x.contiguous(), values, perm, partner, flags, n, num_layers, float(steepness), float(lam),
            WIDTH=width, KIND=kind, LIBDEVICE=x.is_cuda and not _interpreting(),
            num_warps=4 if width <= 64 else 8,
        )  # fmt: skip
    return values.to(x.dtype), perm.to(x.dtype)


class _SortTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comparators, layer_offsets, steepness, distribution, art_lambda):  # noqa: D102
        n = x.shape[1]
        width = max(triton.next_power_of_2(n), 2)
        partner, flags = layer_tables(comparators.cpu(), layer_offsets, width)
        values, perm = _forward(
            x, partner.to(x.device), flags.to(x.device), len(layer_offsets) - 1, steepness,
            _KINDS[distribution], art_lambda,
        )  # fmt: skip
        ctx.save_for_backward(x, comparators)
        ctx.params = (layer_offsets, steepness, distribution, art_lambda)
        return values, perm

    @staticmethod
    def backward(ctx, grad_values, grad_perm):  # noqa: D102
        x, comparators = ctx.saved_tensors
        layer_offsets, steepness, distribution, art_lambda = ctx.params
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            values, perm = sort_reference(
                leaf, comparators.long(), layer_offsets, steepness, distribution, art_lambda
            )
            outputs = [t for t, g in ((values, grad_values), (perm, grad_perm)) if g is not None]
            grads = [g for g in (grad_values, grad_perm) if g is not None]
            (grad_x,) = torch.autograd.grad(outputs, leaf, grads)
        return grad_x, None, None, None, None, None


def sort_triton(
    x: Tensor,
    comparators32: Tensor,
    layer_offsets: list[int],
    steepness: float,
    distribution: str,
    art_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Sort rows of `x` with the Triton forward kernel (float32 mixing) and a recomputing backward."""
    if triton is None:
        raise RuntimeError("triton is not importable")
    if not math.isfinite(steepness):
        raise ValueError(f"`steepness` must be finite but is {steepness}")
    return _SortTriton.apply(x, comparators32, layer_offsets, steepness, distribution, art_lambda)
