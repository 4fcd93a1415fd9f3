"""Triton kernels for CUDA: one program per row, the row's P tile and values held in registers.

Each layer is described per wire (partner wire, whether the wire is the comparator's `a` input, whether it
receives the minimum); a layer is two register gathers and a few elementwise ops. Only the input rows are kept
for backward. The backward kernel, one program per row, recomputes the row's values and P tile layer by
layer from the input row into a workspace slot (registers cannot hold a stack of L tiles, and the 2x2 mixes
are not stably invertible), then walks the layers in reverse propagating the gradients of P and of the sorted
values. The workspace lives only during the backward call and is bounded (`WORKSPACE_BYTES`): rows go
through in launches of as many as fit. Runs on the CPU under `TRITON_INTERPRET=1` for tests.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

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
        # atan from elementary ops for the Triton interpreter, which has no libdevice. Evaluated in float64 and
        # rounded once, so it matches torch's (correctly rounded) float32 atan: at steepness 100 a 1-ulp alpha
        # difference grows through the layers to ~1e-5 in P.
        t = tl.abs(v.to(tl.float64))
        big = t > 1.0
        t = tl.where(big, 1.0 / tl.maximum(t, 1e-300), t)
        mid = t > 0.41421356237309503
        u = tl.where(mid, (t - 1.0) / (t + 1.0), t)
        u2 = u * u
        poly = tl.zeros_like(u) + 1.0 / 41.0
        for k in tl.static_range(19, -1, -1):
            poly = (1.0 / (2 * k + 1)) - u2 * poly
        r = u * poly
        r = tl.where(mid, r + 0.7853981633974483, r)  # (a literal inside tl.where would be float32)
        r = tl.where(big, 1.5707963267948966 - r, r)
        return tl.where(v < 0, -r, r).to(v.dtype)

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
            ad = tl.abs(d) + 1e-10
            if LIBDEVICE:
                q = libdevice.pow(ad, lam + tl.zeros_like(ad))  # both operands in the row dtype
            else:  # rounded once, like torch's pow
                q = tl.exp(lam * tl.log(ad.to(tl.float64))).to(ad.dtype)
            alpha = 1.0 / (1.0 + tl.exp(-(d * s / q)))
        elif KIND == 3:
            # the reference's order: diff / (1 / steepness) / sqrt(2)
            alpha = 0.5 + 0.5 * tl.math.erf(d / (1.0 / s) / 1.4142135623730951)
        elif KIND == 4:
            v = s * d
            alpha = 0.5 * (v / (2.0 + tl.abs(v)) + 1.0)
        else:
            v = s * d
            tails = (v > 0.25).to(v.dtype) - (v < -0.25).to(v.dtype)
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
        F64: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)  # row * n * n overflows int32 beyond ~890k rows at n = 49
        wires = tl.arange(0, WIDTH)
        items = tl.arange(0, WIDTH)
        valid = wires < n
        xs = tl.load(x_ptr + row * n + wires, mask=valid, other=0.0)
        if F64:  # float64 rows mix in float64, everything else in float32
            xs = xs.to(tl.float64)
        else:
            xs = xs.to(tl.float32)
        tile = (items[:, None] == wires[None, :]).to(xs.dtype)  # (item, wire), identity
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

    @triton.jit
    def _dalpha(d, s, lam, KIND: tl.constexpr):
        # d alpha / d d (d = b - a), the derivative of `_alpha` (and of the reference's autograd graph).
        if KIND == 0:
            v = s * d
            g = 0.3183098861837907 * s / (1.0 + v * v)
        elif KIND == 1:
            e = 1.0 / (1.0 + tl.exp(-(d * s)))
            g = e * (1.0 - e) * s
        elif KIND == 2:
            ad = tl.abs(d) + 1e-10
            q = tl.exp(lam * tl.log(ad))
            u = d * s / q
            sign = (d > 0).to(d.dtype) - (d < 0).to(d.dtype)
            du = s / q - d * s / (q * q) * lam * (q / ad) * sign
            e = 1.0 / (1.0 + tl.exp(-u))
            g = e * (1.0 - e) * du
        elif KIND == 3:
            z = d * s
            g = s * tl.exp(-0.5 * z * z) / 2.5066282746310002
        elif KIND == 4:
            den = 2.0 + tl.abs(s * d)
            g = s / (den * den)
        else:
            av = tl.abs(s * d)
            den = av + 1e-10
            g = tl.where(av <= 0.25, s, s * 0.0625 / (den * den))
        return g

    @triton.jit
    def _mix_layer(
        xs,
        tile,
        partner_ptr,
        flags_ptr,
        layer,
        s,
        lam,
        wires,
        WIDTH: tl.constexpr,
        KIND: tl.constexpr,
        LIBDEVICE: tl.constexpr,
        WITH_TILE: tl.constexpr,
    ):
        # One forward layer on the row's values and (if WITH_TILE) its (item, wire) tile.
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
        xs_new = tl.where(active, tl.where(is_lo, alpha * va + beta * vb, beta * va + alpha * vb), xs)
        if WITH_TILE:
            other_cols = tl.gather(tile, tl.broadcast_to(partner[None, :], (WIDTH, WIDTH)), 1)
            ta = tl.where(is_a[None, :], tile, other_cols)
            tb = tl.where(is_a[None, :], other_cols, tile)
            a2, b2 = alpha[None, :], beta[None, :]
            new_tile = tl.where(is_lo[None, :], a2 * ta + b2 * tb, b2 * ta + a2 * tb)
            tile = tl.where(active[None, :], new_tile, tile)
        return xs_new, tile

    @triton.jit
    def _sort_backward_kernel(
        x_ptr,
        grad_values_ptr,
        grad_perm_ptr,
        grad_x_ptr,
        partner_ptr,
        flags_ptr,
        ws_values_ptr,
        ws_tile_ptr,
        row_start,
        n,
        num_layers,
        s,
        lam,
        WIDTH: tl.constexpr,
        KIND: tl.constexpr,
        LIBDEVICE: tl.constexpr,
        HAS_VALUES: tl.constexpr,
        HAS_PERM: tl.constexpr,
        F64: tl.constexpr,
    ):
        local = tl.program_id(0).to(tl.int64)  # slot in the workspace
        row = row_start + local
        wires = tl.arange(0, WIDTH)
        items = tl.arange(0, WIDTH)
        valid = wires < n
        mask2 = (items[:, None] < n) & valid[None, :]
        square = items[:, None] * WIDTH + wires[None, :]
        ws_values = ws_values_ptr + local * num_layers * WIDTH
        ws_tile = ws_tile_ptr + local * num_layers * WIDTH * WIDTH
        # Recompute pass: the row's values and tile before each layer, from the input row.
        xs = tl.load(x_ptr + row * n + wires, mask=valid, other=0.0)
        if F64:  # float64 rows mix in float64, everything else in float32
            xs = xs.to(tl.float64)
        else:
            xs = xs.to(tl.float32)
        tile = (items[:, None] == wires[None, :]).to(xs.dtype)  # (item, wire), identity
        for layer in range(num_layers):
            tl.store(ws_values + layer * WIDTH + wires, xs)
            if HAS_PERM:
                tl.store(ws_tile + layer * WIDTH * WIDTH + square, tile)
            xs, tile = _mix_layer(xs, tile, partner_ptr, flags_ptr, layer, s, lam, wires,
                                  WIDTH, KIND, LIBDEVICE, HAS_PERM)  # fmt: skip
        if HAS_VALUES:
            gx = tl.load(grad_values_ptr + row * n + wires, mask=valid, other=0.0).to(xs.dtype)
        else:
            gx = tl.zeros((WIDTH,), dtype=xs.dtype)
        if HAS_PERM:  # gradient of the (item, wire) tile after the current layer
            gt = tl.load(
                grad_perm_ptr + row * n * n + items[:, None] * n + wires[None, :], mask=mask2, other=0.0
            ).to(xs.dtype)
        else:
            gt = tl.zeros((WIDTH, WIDTH), dtype=xs.dtype)
        # Reverse pass through the layers.
        for step in range(num_layers):
            layer = num_layers - 1 - step
            xs = tl.load(ws_values + layer * WIDTH + wires)
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
            g_other = tl.gather(gx, partner, 0)
            g_lo = tl.where(is_lo, gx, g_other)
            g_hi = tl.where(is_lo, g_other, gx)
            # dL/dalpha: both wires of a comparator compute the same value.
            galpha = (va - vb) * (g_lo - g_hi)
            if HAS_PERM:
                tile = tl.load(ws_tile + layer * WIDTH * WIDTH + square)
                cols = tl.broadcast_to(partner[None, :], (WIDTH, WIDTH))
                t_other = tl.gather(tile, cols, 1)
                ta = tl.where(is_a[None, :], tile, t_other)
                tb = tl.where(is_a[None, :], t_other, tile)
                gt_other = tl.gather(gt, cols, 1)
                gt_lo = tl.where(is_lo[None, :], gt, gt_other)
                gt_hi = tl.where(is_lo[None, :], gt_other, gt)
                galpha += tl.sum((ta - tb) * (gt_lo - gt_hi), axis=0)
                a2, b2 = alpha[None, :], beta[None, :]
                gt_new = tl.where(is_a[None, :], a2 * gt_lo + b2 * gt_hi, b2 * gt_lo + a2 * gt_hi)
                gt = tl.where(active[None, :], gt_new, gt)
            gd = galpha * _dalpha(vb - va, s, lam, KIND)
            gx_new = tl.where(is_a, alpha * g_lo + beta * g_hi - gd, beta * g_lo + alpha * g_hi + gd)
            gx = tl.where(active, gx_new, gx)
        tl.store(grad_x_ptr + row * n + wires, gx, mask=valid)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _forward(
    x: Tensor, partner: Tensor, flags: Tensor, num_layers: int, steepness: float, kind: int, lam: float
):
    batch, n = x.shape
    width = max(triton.next_power_of_2(n), 2)
    dtype = _compute_dtype(x)
    values = torch.empty(batch, n, dtype=dtype, device=x.device)
    perm = torch.empty(batch, n, n, dtype=dtype, device=x.device)
    if batch > 0:
        _sort_kernel[(batch,)](
            x.contiguous(), values, perm, partner, flags, n, num_layers, float(steepness), float(lam),
            WIDTH=width, KIND=kind, LIBDEVICE=x.is_cuda and not _interpreting(), F64=dtype == torch.float64,
            num_warps=4 if width <= 64 else 8,
        )  # fmt: skip
    return values.to(x.dtype), perm.to(x.dtype)


# Bytes of backward workspace (values and tiles of every layer, per row in flight): rows are processed in
# launches of as many rows as fit, but never fewer than `_MIN_CHUNK_ROWS` (a smaller grid would idle the GPU).
WORKSPACE_BYTES = 256 << 20
_MIN_CHUNK_ROWS = 512


def backward_chunk_rows(batch: int, width: int, num_layers: int, with_tile: bool, itemsize: int = 4) -> int:
    """Rows per backward launch: as many as fit in `WORKSPACE_BYTES` (at least `_MIN_CHUNK_ROWS`)."""
    per_row = itemsize * max(num_layers, 1) * width * (1 + (width if with_tile else 0))
    return max(1, min(batch, max(_MIN_CHUNK_ROWS, WORKSPACE_BYTES // per_row)))


def _backward(
    x: Tensor,
    grad_values: Tensor | None,
    grad_perm: Tensor | None,
    partner: Tensor,
    flags: Tensor,
    num_layers: int,
    steepness: float,
    kind: int,
    lam: float,
) -> Tensor:
    batch, n = x.shape
    width = max(triton.next_power_of_2(n), 2)
    dtype = _compute_dtype(x)
    grad_x = torch.zeros(batch, n, dtype=dtype, device=x.device)
    if batch == 0 or num_layers == 0 or (grad_values is None and grad_perm is None):
        if grad_values is not None:
            grad_x += grad_values.to(dtype)
        return grad_x.to(x.dtype)
    has_perm = grad_perm is not None
    chunk = backward_chunk_rows(batch, width, num_layers, has_perm, torch.finfo(dtype).bits // 8)
    ws_values = torch.empty(chunk, num_layers, width, dtype=dtype, device=x.device)
    ws_tile = torch.empty(chunk if has_perm else 0, num_layers, width, width, dtype=dtype, device=x.device)
    empty = grad_x.new_empty(0)
    x = x.contiguous()
    gv = empty if grad_values is None else grad_values.to(dtype).contiguous()
    gp = empty if grad_perm is None else grad_perm.to(dtype).contiguous()
    for start in range(0, batch, chunk):
        rows = min(chunk, batch - start)
        _sort_backward_kernel[(rows,)](
            x, gv, gp, grad_x, partner, flags, ws_values, ws_tile, start, n, num_layers,
            float(steepness), float(lam),
            WIDTH=width, KIND=kind, LIBDEVICE=x.is_cuda and not _interpreting(),
            HAS_VALUES=grad_values is not None, HAS_PERM=has_perm, F64=dtype == torch.float64,
            num_warps=4 if width <= 64 else 8,
        )  # fmt: skip
    return grad_x.to(x.dtype)


class _SortTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comparators, layer_offsets, steepness, distribution, art_lambda):  # noqa: D102
        n = x.shape[1]
        width = max(triton.next_power_of_2(n), 2)
        partner, flags = layer_tables(comparators.cpu(), layer_offsets, width)
        partner, flags = partner.to(x.device), flags.to(x.device)
        num_layers, kind = len(layer_offsets) - 1, _KINDS[distribution]
        values, perm = _forward(x, partner, flags, num_layers, steepness, kind, art_lambda)
        ctx.save_for_backward(x, partner, flags)
        ctx.params = (num_layers, steepness, kind, art_lambda)
        return values, perm

    @staticmethod
    def backward(ctx, grad_values, grad_perm):  # noqa: D102
        x, partner, flags = ctx.saved_tensors
        num_layers, steepness, kind, art_lambda = ctx.params
        grad_x = _backward(x, grad_values, grad_perm, partner, flags, num_layers, steepness, kind, art_lambda)
        return grad_x, None, None, None, None, None


def sort_triton(
    x: Tensor,
    comparators32: Tensor,
    layer_offsets: list[int],
    steepness: float,
    distribution: str,
    art_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Sort rows of `x` with the Triton kernels (float32 mixing, float64 for float64 rows)."""
    if triton is None:
        raise RuntimeError("triton is not importable")
    if not math.isfinite(steepness):
        raise ValueError(f"`steepness` must be finite but is {steepness}")
    return _SortTriton.apply(x, comparators32, layer_offsets, steepness, distribution, art_lambda)
