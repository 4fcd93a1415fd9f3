"""The NeCo loss: student and teacher must agree on how each patch orders the reference patches.

For a global crop g and another crop v, the teacher grid of g and the student grid of v are ROI-aligned
to their overlap (s x s positions, Q = s*s queries per image). Each query is compared with K = s*s
reference vectors R (cosine similarity by default); a differentiable sorting network turns each row of
scores into a soft permutation P (B*Q, K, K), `P[q, k, r]` = mass of reference k at ascending rank r.
The pair loss is the cross-entropy of the student's P against the teacher's (teacher without gradient)::

    loss = -(1 / (B*Q*K)) * sum_{q,k,r} P_T[q,k,r] * log(max(P_S[q,k,r], eps))

averaged over the other crops v of each g, then over g (Pariza et al., ICLR 2025, section 3).

Shape legend: B = batch, C = head channels, G = global crops, V = all crops (globals first),
s = ROI side, Q = queries per image, K = references per image, N = sorted rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import neco.method.similarity as _similarity
from neco.method.align import roi_align_grid, roi_align_mask
from neco.method.references import ReferenceQueue, batch_references

__all__ = ["NeCoLoss", "NeCoOutput", "REFERENCE_MODES", "pair_loss", "soft_rank_cross_entropy"]

REFERENCE_MODES = {
    "batch": "the pair's aligned teacher vectors of the whole batch, detached and permuted",
    "queue": "a FIFO queue of teacher vectors per global crop (falls back to batch mode until it holds K)",
}


@dataclass
class NeCoOutput:
    """The loss (scalar tensor, differentiable w.r.t. the student grids) and float diagnostics.

    Diagnostics: `loss`, `pairs` (pairs with a counted query), `rows` (sorted query rows),
    `valid_fraction` (of the (g, v != g) sample pairs), `teacher_perm_max` / `student_perm_max` (mean
    largest entry of a P row, 1 = hard permutation); queue mode adds `queue_fill` (smallest fill over
    the queues) and `queue_batch_fallback` (1 when batch references were used this step); with masks,
    `mask_fraction`.
    """

    loss: Tensor
    diagnostics: dict[str, float] = field(default_factory=dict)


class _SoftRankCrossEntropy(torch.autograd.Function):
    """Fused guarded cross-entropy: saves only the two inputs, not the (N, K, K) log and its mask."""

    @staticmethod
    def forward(ctx: Any, student_perm: Tensor, teacher_perm: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(student_perm, teacher_perm)
        ctx.eps = eps
        log_student = student_perm.clamp_min(eps).log_()
        return -(teacher_perm * log_student).sum(dim=(1, 2)) / student_perm.shape[1]  # (N,)

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor) -> tuple[Tensor | None, None, None]:
        student_perm, teacher_perm = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        # d/dP_S of -P_T log(max(P_S, eps)) / K: -P_T / (K P_S) where P_S >= eps (clamp_min's rule), else 0.
        scale = (-grad_rows / student_perm.shape[1])[:, None, None]  # (N, 1, 1)
        grad = teacher_perm / student_perm.clamp_min(ctx.eps)
        grad.masked_fill_(student_perm < ctx.eps, 0.0).mul_(scale)
        return grad, None, None


def soft_rank_cross_entropy(student_perm: Tensor, teacher_perm: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-row loss `-(1/K) * sum_{k,r} P_T[k,r] * log(max(P_S[k,r], eps))`: (N, K, K) x2 -> (N,).

    The log is guarded so that entries of P_S that underflow to 0 give a finite value (no -inf / NaN).
    The teacher's P is treated as a constant (no gradient).
    """
    if student_perm.shape != teacher_perm.shape or student_perm.ndim != 3:
        raise ValueError(
            f"`student_perm` and `teacher_perm` must be (N, K, K) of one shape but have shapes "
            f"{tuple(student_perm.shape)} and {tuple(teacher_perm.shape)}"
        )
    return _SoftRankCrossEntropy.apply(student_perm, teacher_perm.detach(), eps)


def _full_precision(device: torch.device) -> torch.autocast:
    """Disable autocast: scores differ by ~1e-3 at steepness 100, below bfloat16's resolution near 1."""
    return torch.autocast(device_type=device.type, enabled=False)


def _as_vectors(grid: Tensor, name: str) -> Tensor:
    """(B, C, h, w) grid or (B, K, C) vectors -> (B, h*w or K, C)."""
    if grid.ndim == 4:
        return grid.flatten(2).transpose(1, 2)  # (B, h*w, C)
    if grid.ndim == 3:
        return grid
    raise ValueError(
        f"`{name}` must be a (B, C, h, w) grid or (B, K, C) vectors but has shape {tuple(grid.shape)}"
    )


def pair_loss(
    student: Tensor,
    teacher: Tensor,
    references: Tensor,
    student_sorter: nn.Module,
    teacher_sorter: nn.Module,
    *,
    similarity: str = "cosine",
    query_mask: Tensor | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """NeCo loss of one (global crop, other crop) pair on aligned grids -> scalar.

    Args:
        student: (B, C, h, w) student grid aligned to the overlap (gradient flows here).
        teacher: (B, C, h, w) teacher grid aligned to the same overlap (treated as constant).
        references: (B, C, h', w') grid or (B, K, C) vectors, K = the sorters' size (treated as constant).
        student_sorter, teacher_sorter: `DiffSort`-like modules, `(B*Q, K) -> (sorted, P (B*Q, K, K))`.
        similarity: "cosine" or "euclidean".
        query_mask: optional (B, h, w) bool; the loss is averaged over these query positions only
            (0 with a gradient path when none is set).
        eps: guard of the log.
    """
    if student.shape != teacher.shape or student.ndim != 4:
        raise ValueError(
            f"`student` and `teacher` must be (B, C, h, w) grids of one shape but have shapes "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    queries_s = _as_vectors(student, "student").float()  # (B, Q, C)
    queries_t = _as_vectors(teacher, "teacher").detach().float()  # (B, Q, C)
    refs = _as_vectors(references, "references").detach().float()  # (B, K, C)
    batch, num_queries = queries_s.shape[:2]
    num_refs = refs.shape[1]
    with _full_precision(queries_s.device):
        student_scores = _similarity.similarity(queries_s, refs, similarity)
        _, student_perm = student_sorter(student_scores.reshape(batch * num_queries, num_refs))  # (N, K, K)
        with torch.no_grad():
            teacher_scores = _similarity.similarity(queries_t, refs, similarity)
            _, teacher_perm = teacher_sorter(teacher_scores.reshape(batch * num_queries, num_refs))
        rows = soft_rank_cross_entropy(student_perm.float(), teacher_perm.float(), eps)  # (N,)
    if query_mask is None:
        return rows.mean()
    weights = query_mask.reshape(batch * num_queries).to(rows.dtype)
    return (rows * weights).sum() / weights.sum().clamp_min(1.0)


class NeCoLoss(nn.Module):
    """NeCo loss over all (global crop, other crop) pairs of a multi-crop batch.

    Args:
        steepness_student, steepness_teacher: steepness of the two sorting networks (100 published).
        network: "bitonic" or "odd_even".
        distribution: relaxation of the comparators ("cauchy" published).
        similarity: "cosine" (published) or "euclidean" (L2 distance, sorted ascending).
        reference_mode: "batch" or "queue" (see `REFERENCE_MODES`).
        queue_size: rows per global-crop queue on each process (queue mode).
        roi_size: s; Q = K = s*s (7 published, so 49 references).
        queue_gather: all-gather the pushed vectors across ranks (queue mode, torch.distributed).
        eps: guard of the log of the student's permutation.
        queue_push_per_image: vectors pushed per image and global crop each step (10 published).

    The queue (`self.queue`) lives in buffers, so `state_dict()` carries it with its fill count.
    """

    def __init__(
        self,
        steepness_student: float = 100.0,
        steepness_teacher: float = 100.0,
        network: str = "bitonic",
        distribution: str = "cauchy",
        similarity: str = "cosine",
        reference_mode: str = "batch",
        queue_size: int = 8192,
        roi_size: int = 7,
        queue_gather: bool = False,
        eps: float = 1e-12,
        queue_push_per_image: int = 10,
    ) -> None:
        super().__init__()
        from neco.method.sorting import DiffSort  # here, not at import time: sorting imports neco.method

        if similarity not in _similarity.SIMILARITIES:
            raise ValueError(
                f"`similarity` must be one of {sorted(_similarity.SIMILARITIES)} but is {similarity!r}"
            )
        if reference_mode not in REFERENCE_MODES:
            raise ValueError(
                f"`reference_mode` must be one of {sorted(REFERENCE_MODES)} but is {reference_mode!r}"
            )
        if roi_size < 1:
            raise ValueError(f"`roi_size` must be >= 1 but is {roi_size}")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"`eps` must be in (0, 1) but is {eps}")
        if queue_push_per_image < 1:
            raise ValueError(f"`queue_push_per_image` must be >= 1 but is {queue_push_per_image}")
        self.similarity = similarity
        self.reference_mode = reference_mode
        self.roi_size = int(roi_size)
        self.num_references = self.roi_size**2
        self.eps = float(eps)
        self.queue_push_per_image = int(queue_push_per_image)
        self.student_sorter = DiffSort(network, self.num_references, steepness_student, distribution)
        self.teacher_sorter = DiffSort(network, self.num_references, steepness_teacher, distribution)
        self.queue = ReferenceQueue(queue_size, gather=queue_gather) if reference_mode == "queue" else None

    def extra_repr(self) -> str:
        return f"similarity={self.similarity!r}, reference_mode={self.reference_mode!r}, roi_size={self.roi_size}"

    def _check_inputs(
        self,
        student_grids: list[Tensor],
        teacher_grids: list[Tensor],
        boxes: Tensor,
        valid: Tensor,
        teacher_masks: list[Tensor] | None,
    ) -> tuple[int, int, int]:
        num_global, num_views = len(teacher_grids), len(student_grids)
        if num_global < 1 or num_views <= num_global - 1:
            raise ValueError(
                f"`teacher_grids` must hold >= 1 global grid and `student_grids` every view (globals first) "
                f"but got {num_global} and {num_views}"
            )
        batch, channels = teacher_grids[0].shape[:2]
        for name, grids in (("student_grids", student_grids), ("teacher_grids", teacher_grids)):
            for index, grid in enumerate(grids):
                if grid.ndim != 4 or grid.shape[:2] != (batch, channels):
                    raise ValueError(
                        f"`{name}[{index}]` must be (B={batch}, C={channels}, h, w) but has shape {tuple(grid.shape)}"
                    )
        if boxes.shape != (batch, num_global, num_views, 2, 4):
            raise ValueError(
                f"`boxes` must be (B, G, V, 2, 4) = {(batch, num_global, num_views, 2, 4)} but is {tuple(boxes.shape)}"
            )
        if valid.shape != (batch, num_global, num_views):
            raise ValueError(
                f"`valid` must be (B, G, V) = {(batch, num_global, num_views)} but is {tuple(valid.shape)}"
            )
        if teacher_masks is not None:
            if len(teacher_masks) != num_global:
                raise ValueError(
                    f"`teacher_masks` must hold one mask per global crop ({num_global}) but holds {len(teacher_masks)}"
                )
            for g, (mask, grid) in enumerate(zip(teacher_masks, teacher_grids)):
                if mask.shape != (batch, *grid.shape[2:]):
                    raise ValueError(
                        f"`teacher_masks[{g}]` must be (B, h, w) = {(batch, *grid.shape[2:])} but is {tuple(mask.shape)}"
                    )
        return batch, num_global, num_views

    def forward(
        self,
        student_grids: list[Tensor],
        teacher_grids: list[Tensor],
        boxes: Tensor,
        valid: Tensor,
        patch_size: int,
        teacher_masks: list[Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> NeCoOutput:
        """Loss over every pair (g, v != g) with a valid overlap.

        Args:
            student_grids: V student head grids (B, C, h_v, w_v), globals first.
            teacher_grids: G teacher head grids (B, C, h_g, w_g), computed without gradient.
            boxes: (B, G, V, 2, 4) overlap boxes in pixels (`MultiCropSampler`): `[..., 0, :]` in g's frame,
                `[..., 1, :]` in v's frame.
            valid: (B, G, V) bool; pairs of a sample marked False carry no loss.
            patch_size: pixels per token.
            teacher_masks: optional G bool masks (B, h_g, w_g) of the positions to train on (fg, or ~fg
                for bg): the loss is averaged over those query positions and only they enter the queue.
            generator: optional random generator for the reference draws.
        """
        batch, num_global, num_views = self._check_inputs(
            student_grids, teacher_grids, boxes, valid, teacher_masks
        )
        teacher_grids = [grid.detach().float() for grid in teacher_grids]
        device = teacher_grids[0].device
        boxes = boxes.to(device=device, dtype=torch.float32)
        valid = valid.to(device=device, dtype=torch.bool)
        diagnostics: dict[str, float] = {}
        queue_ready = False
        if self.queue is not None:
            with torch.no_grad():
                self.queue.ensure(num_global, teacher_grids[0].shape[1], device)
                for g in range(num_global):
                    mask = teacher_masks[g] if teacher_masks is not None else None
                    self.queue.push_grid(g, teacher_grids[g], mask, self.queue_push_per_image, generator)
            fills = self.queue.fill.tolist()  # one host read per step; `sample` then needs none
            fill = min(fills)
            queue_ready = fill >= self.num_references
            diagnostics["queue_fill"] = float(fill)
            diagnostics["queue_batch_fallback"] = float(not queue_ready)

        # Which query rows of each pair count, read to the host once for all pairs (no sync per pair).
        pairs = [(g, v) for g in range(num_global) for v in range(num_views) if v != g]
        keeps = []
        for g, v in pairs:
            weight = valid[:, g, v, None].expand(batch, self.num_references)  # (B, Q)
            if teacher_masks is not None:
                aligned = roi_align_mask(teacher_masks[g], boxes[:, g, v, 0], patch_size, self.roi_size)
                weight = weight & aligned.flatten(1)  # (B, Q)
            keeps.append(weight.reshape(-1))
        keep_all = (
            torch.stack(keeps) if keeps else torch.zeros(0, batch * self.num_references, dtype=torch.bool)
        )
        keep_host = keep_all.cpu()  # (pairs, B*Q)
        any_valid = valid.any(dim=0).tolist()  # (G, V) nested lists

        student_scores, teacher_scores, weights, pair_ids = [], [], [], []
        pair_of: list[tuple[int, int]] = []
        for (g, v), keep, keep_rows in zip(pairs, keeps, keep_host):
            if not any_valid[g][v]:
                continue
            pair_valid = valid[:, g, v]  # (B,)
            teacher = roi_align_grid(teacher_grids[g], boxes[:, g, v, 0], patch_size, self.roi_size)
            student = roi_align_grid(student_grids[v], boxes[:, g, v, 1], patch_size, self.roi_size)
            teacher = teacher.flatten(2).transpose(1, 2)  # (B, Q, C)
            student = student.flatten(2).transpose(1, 2).float()  # (B, Q, C)
            references = None
            if queue_ready:
                references = self.queue.sample(g, batch, self.num_references, generator, filled=fills[g])
            if references is None:
                references = batch_references(
                    teacher,
                    self.num_references,
                    sample_valid=pair_valid,
                    query_mask=keep.reshape(batch, -1) if teacher_masks is not None else None,
                    generator=generator,
                )
            rows = keep_rows.nonzero().squeeze(1)  # only rows that count are sorted
            if rows.numel() == 0:
                continue
            rows = rows.to(device, non_blocking=True)
            references = references.detach().float()
            with _full_precision(device):
                scores_s = _similarity.similarity(student, references, self.similarity)  # (B, Q, K)
                with torch.no_grad():
                    scores_t = _similarity.similarity(teacher, references, self.similarity)  # (B, Q, K)
            scores_s, scores_t = scores_s.flatten(0, 1), scores_t.flatten(0, 1)  # (B*Q, K)
            student_scores.append(scores_s.index_select(0, rows))
            teacher_scores.append(scores_t.index_select(0, rows))
            weights.append(torch.ones(rows.numel(), device=device))
            pair_ids.append(torch.full((rows.numel(),), len(pair_of), device=device, dtype=torch.long))
            pair_of.append((g, v))

        if not pair_of:
            # Nothing to compare: a zero that still reaches every student grid, so backward() works.
            zero = sum(grid.sum() for grid in student_grids) * 0.0
            diagnostics.update(pairs=0.0, rows=0.0)
            return NeCoOutput(loss=zero, diagnostics=diagnostics)

        # One sort call per network over all pairs: far fewer kernel launches than one per pair.
        with _full_precision(device):
            _, student_perm = self.student_sorter(torch.cat(student_scores))  # (N, K, K)
            with torch.no_grad():
                _, teacher_perm = self.teacher_sorter(torch.cat(teacher_scores))  # (N, K, K)
            rows = soft_rank_cross_entropy(student_perm.float(), teacher_perm.float(), self.eps)  # (N,)
        pair_ids_all = torch.cat(pair_ids)
        num_pairs = len(pair_of)
        pair_sum = torch.zeros(num_pairs, device=device).index_add(0, pair_ids_all, rows)
        pair_count = torch.zeros(num_pairs, device=device).index_add(0, pair_ids_all, torch.cat(weights))
        per_pair = pair_sum / pair_count  # (pairs,) mean over the pair's counted queries

        # Average over the other crops v of each g, then over the global crops that have any pair.
        crop_of_pair = torch.tensor([g for g, _ in pair_of], device=device)
        per_crop_sum = torch.zeros(num_global, device=device).index_add(0, crop_of_pair, per_pair)
        per_crop_n = torch.zeros(num_global, device=device).index_add(
            0, crop_of_pair, torch.ones_like(per_pair)
        )
        has_pairs = per_crop_n > 0
        loss = (per_crop_sum[has_pairs] / per_crop_n[has_pairs]).mean()

        with torch.no_grad():
            off_diagonal = ~torch.eye(num_global, num_views, dtype=torch.bool, device=device)
            diagnostics["pairs"] = float(num_pairs)
            diagnostics["rows"] = float(rows.shape[0])
            on_device = {
                "loss": loss.detach(),
                # How hard the teacher's soft ranks are (1 = a permutation): watch it next to the loss.
                "teacher_perm_max": teacher_perm.amax(dim=2).mean(),
                "student_perm_max": student_perm.detach().amax(dim=2).mean(),
            }
            if num_global * num_views > num_global:  # any off-diagonal (g, v)
                on_device["valid_fraction"] = valid[:, off_diagonal].float().mean()
            else:
                diagnostics["valid_fraction"] = 0.0
            if teacher_masks is not None:
                on_device["mask_fraction"] = torch.stack([m.float().mean() for m in teacher_masks]).mean()
            # One device-to-host read for all of them.
            values = torch.stack([t.float() for t in on_device.values()]).tolist()
            diagnostics.update(zip(on_device, values))
        return NeCoOutput(loss=loss, diagnostics=diagnostics)
