"""The NeCo loss against a straightforward dense implementation built on the `diffsort` package."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffsort import DiffSortNet
from torchvision.ops import roi_align

import neco.method.loss as loss_module
from neco.method.loss import NeCoLoss, pair_loss, soft_rank_cross_entropy
from neco.method.sorting import DiffSort

EPS = 1e-12


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: one thread avoids oversubscription on the shared 2-core machine (restored after).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dense_pair(student, teacher, references, steepness_s, steepness_t, kind="cosine", mask=None):
    """Per image, per query: scores vs the image's references, diffsort P, -(1/(B*Q*K)) sum P_T log P_S."""
    batch, channels = student.shape[:2]
    k = references.shape[1]
    sorter_s = DiffSortNet("bitonic", k, steepness=steepness_s, distribution="cauchy")
    sorter_t = DiffSortNet("bitonic", k, steepness=steepness_t, distribution="cauchy")
    total, count = 0.0, 0
    for b in range(batch):
        s = student[b].reshape(channels, -1).T  # (Q, C)
        t = teacher[b].reshape(channels, -1).T.detach()
        r = references[b].detach()  # (K, C)
        if kind == "cosine":
            s_scores = F.normalize(s, dim=1) @ F.normalize(r, dim=1).T
            t_scores = F.normalize(t, dim=1) @ F.normalize(r, dim=1).T
        else:
            s_scores = torch.cdist(s[None], r[None])[0]
            t_scores = torch.cdist(t[None], r[None])[0]
        _, p_s = sorter_s(s_scores)
        with torch.no_grad():
            _, p_t = sorter_t(t_scores)
        terms = -(p_t * torch.log(p_s.clamp_min(EPS))).sum(dim=(1, 2)) / k  # (Q,)
        if mask is not None:
            terms = terms[mask[b].reshape(-1)]
        total = total + terms.sum()
        count += terms.numel()
    return total / count


def _random_problem(batch=2, channels=6, roi=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student_grids = [
        torch.randn(batch, channels, 6, 6, generator=generator),
        torch.randn(batch, channels, 6, 6, generator=generator),
        torch.randn(batch, channels, 3, 3, generator=generator),
    ]
    teacher_grids = [torch.randn(batch, channels, 6, 6, generator=generator) for _ in range(2)]
    patch = 4
    boxes = torch.zeros(batch, 2, 3, 2, 4)
    for b in range(batch):
        for g in range(2):
            for v in range(3):
                side = 12 if v == 2 else 24
                x1, y1 = torch.rand(2, generator=generator) * side * 0.4
                x2, y2 = (
                    x1 + 4 + torch.rand(1, generator=generator) * 8,
                    y1 + 4 + torch.rand(1, generator=generator) * 8,
                )
                boxes[b, g, v, 0] = torch.tensor([x1 * 2, y1 * 2, x2 * 2, y2 * 2]).clamp(max=24)
                boxes[b, g, v, 1] = torch.tensor([x1, y1, x2, y2]).clamp(max=side)
    valid = torch.ones(batch, 2, 3, dtype=torch.bool)
    valid[:, 0, 0] = valid[:, 1, 1] = False
    return student_grids, teacher_grids, boxes, valid, patch


def _fixed_references(teacher, num_references, **_):
    # Deterministic stand-in for the random batch references: the aligned teacher vectors, reversed.
    return teacher.detach().flip(1)[:, :num_references]


def _dense_total(student_grids, teacher_grids, boxes, valid, patch, roi, steepness=100.0, kind="cosine"):
    num_global, num_views = len(teacher_grids), len(student_grids)
    per_g = []
    for g in range(num_global):
        terms = []
        for v in range(num_views):
            if v == g:
                continue
            keep = valid[:, g, v]
            index = torch.arange(boxes.shape[0], dtype=torch.float32)[:, None]
            t = roi_align(
                teacher_grids[g], torch.cat([index, boxes[:, g, v, 0] / patch], 1), roi, aligned=True
            )
            s = roi_align(
                student_grids[v], torch.cat([index, boxes[:, g, v, 1] / patch], 1), roi, aligned=True
            )
            references = _fixed_references(t.flatten(2).transpose(1, 2), roi * roi)
            terms.append(_dense_pair(s[keep], t[keep], references[keep], steepness, steepness, kind))
        per_g.append(torch.stack(terms).mean())
    return torch.stack(per_g).mean()


@pytest.mark.parametrize("kind", ["cosine", "euclidean"])
def test_neco_loss_matches_dense_diffsort_value_and_grads(monkeypatch, kind) -> None:
    monkeypatch.setattr(loss_module, "batch_references", _fixed_references)
    student_grids, teacher_grids, boxes, valid, patch = _random_problem(seed=1)
    ours_inputs = [s.clone().requires_grad_(True) for s in student_grids]
    dense_inputs = [s.clone().requires_grad_(True) for s in student_grids]
    criterion = NeCoLoss(roi_size=3, similarity=kind)
    out = criterion(ours_inputs, teacher_grids, boxes, valid, patch_size=patch)
    expected = _dense_total(dense_inputs, teacher_grids, boxes, valid, patch, roi=3, kind=kind)
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)
    out.loss.backward()
    expected.backward()
    for ours, dense in zip(ours_inputs, dense_inputs):
        assert ours.grad is not None and ours.grad.abs().sum() > 0
        torch.testing.assert_close(ours.grad, dense.grad, rtol=1e-3, atol=1e-6)
    assert out.diagnostics["pairs"] == 4.0  # (g, v) pairs: (0,1), (0,2), (1,0), (1,2)


def test_invalid_samples_are_excluded(monkeypatch) -> None:
    monkeypatch.setattr(loss_module, "batch_references", _fixed_references)
    student_grids, teacher_grids, boxes, valid, patch = _random_problem(batch=3, seed=2)
    valid[1, :, 2] = False  # sample 1 of crop 2 overlaps neither global crop
    out = NeCoLoss(roi_size=3)(student_grids, teacher_grids, boxes, valid, patch_size=patch)
    expected = _dense_total(student_grids, teacher_grids, boxes, valid, patch, roi=3)
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)
    # Changing the invalid sample's student grid must not change the loss.
    student_grids[2][1] += 5.0
    again = NeCoLoss(roi_size=3)(student_grids, teacher_grids, boxes, valid, patch_size=patch)
    torch.testing.assert_close(again.loss, out.loss)


def test_pair_loss_matches_dense_at_roi_7() -> None:
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(2, 8, 7, 7, generator=generator, requires_grad=True)
    teacher = torch.randn(2, 8, 7, 7, generator=generator)
    references = torch.randn(2, 8, 7, 7, generator=generator)
    sorter_s, sorter_t = DiffSort("bitonic", 49, 100.0), DiffSort("bitonic", 49, 100.0)
    ours = pair_loss(student, teacher, references, sorter_s, sorter_t)
    student_dense = student.detach().clone().requires_grad_(True)
    dense = _dense_pair(student_dense, teacher, references.flatten(2).transpose(1, 2), 100.0, 100.0)
    torch.testing.assert_close(ours, dense, rtol=1e-4, atol=1e-5)
    (grad_ours,) = torch.autograd.grad(ours, student)
    dense.backward()
    torch.testing.assert_close(grad_ours, student_dense.grad, rtol=1e-3, atol=1e-7)
    # A query mask averages over the masked queries only.
    mask = torch.rand(2, 7, 7, generator=generator) > 0.5
    masked = pair_loss(student, teacher, references, sorter_s, sorter_t, query_mask=mask)
    dense_masked = _dense_pair(
        student.detach(), teacher, references.flatten(2).transpose(1, 2), 100.0, 100.0, mask=mask
    )
    torch.testing.assert_close(masked, dense_masked, rtol=1e-4, atol=1e-5)


def test_identical_teacher_gives_lower_loss_than_permuted_teacher() -> None:
    generator = torch.Generator().manual_seed(4)
    grid = torch.randn(2, 16, 3, 3, generator=generator)
    references = torch.randn(2, 16, 3, 3, generator=generator)
    sorter = DiffSort("bitonic", 9, 100.0)
    same = pair_loss(grid, grid, references, sorter, sorter)
    permuted = grid.flatten(2)[:, :, torch.randperm(9, generator=generator)].reshape_as(grid)
    other = pair_loss(grid, permuted, references, sorter, sorter)
    assert same < other


def test_gradient_reaches_student_only() -> None:
    student_grids, teacher_grids, boxes, valid, patch = _random_problem(seed=5)
    student_grids = [s.requires_grad_(True) for s in student_grids]
    teacher_grids = [t.requires_grad_(True) for t in teacher_grids]
    out = NeCoLoss(roi_size=3)(student_grids, teacher_grids, boxes, valid, patch_size=patch)
    out.loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student_grids)
    assert all(t.grad is None for t in teacher_grids)
    # The references given to pair_loss are constants too.
    generator = torch.Generator().manual_seed(6)
    student = torch.randn(1, 4, 3, 3, generator=generator, requires_grad=True)
    teacher = torch.randn(1, 4, 3, 3, generator=generator, requires_grad=True)
    references = torch.randn(1, 4, 3, 3, generator=generator, requires_grad=True)
    sorter = DiffSort("bitonic", 9, 100.0)
    pair_loss(student, teacher, references, sorter, sorter).backward()
    assert student.grad is not None and teacher.grad is None and references.grad is None


def test_guarded_log_is_finite_when_probabilities_underflow() -> None:
    student = torch.zeros(1, 4, 4)
    student[0] = torch.eye(4)
    teacher = torch.full((1, 4, 4), 0.25)
    value = soft_rank_cross_entropy(student, teacher, eps=1e-12)
    assert torch.isfinite(value).all()
    expected = -(0.25 * 12 * torch.log(torch.tensor(1e-12))) / 4  # 12 zero entries of P_S, each clamped
    torch.testing.assert_close(value[0], expected)


def test_masks_restrict_queries_and_no_pairs_gives_zero_with_gradient() -> None:
    student_grids, teacher_grids, boxes, valid, patch = _random_problem(seed=7)
    student_grids = [s.requires_grad_(True) for s in student_grids]
    empty = [torch.zeros(2, 6, 6, dtype=torch.bool) for _ in range(2)]
    out = NeCoLoss(roi_size=3)(student_grids, teacher_grids, boxes, valid, patch, teacher_masks=empty)
    assert out.loss.item() == 0.0 and out.diagnostics["pairs"] == 0.0
    out.loss.backward()  # must not raise
    full = [torch.ones(2, 6, 6, dtype=torch.bool) for _ in range(2)]
    generator = torch.Generator().manual_seed(0)
    with_full = NeCoLoss(roi_size=3)(
        student_grids, teacher_grids, boxes, valid, patch, teacher_masks=full, generator=generator
    )
    generator = torch.Generator().manual_seed(0)
    without = NeCoLoss(roi_size=3)(student_grids, teacher_grids, boxes, valid, patch, generator=generator)
    torch.testing.assert_close(with_full.loss, without.loss)


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="reference_mode"):
        NeCoLoss(reference_mode="memory")
    with pytest.raises(ValueError, match="similarity"):
        NeCoLoss(similarity="dot")
    student_grids, teacher_grids, boxes, valid, patch = _random_problem()
    with pytest.raises(ValueError, match="boxes"):
        NeCoLoss(roi_size=3)(student_grids, teacher_grids, boxes[:, :1], valid, patch)


def test_fused_cross_entropy_matches_autograd_formula() -> None:
    generator = torch.Generator().manual_seed(8)
    student = torch.softmax(torch.randn(5, 4, 4, generator=generator, dtype=torch.float64) * 4, dim=-1)
    student[0, 0, 0] = 1e-15  # below eps: clamped, no gradient through it
    student.requires_grad_(True)
    teacher = torch.softmax(torch.randn(5, 4, 4, generator=generator, dtype=torch.float64), dim=-1)
    weights = torch.randn(5, generator=generator, dtype=torch.float64)
    ours = soft_rank_cross_entropy(student, teacher, eps=1e-12)
    reference = -(teacher * torch.log(student.clamp_min(1e-12))).sum(dim=(1, 2)) / 4
    torch.testing.assert_close(ours, reference)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), student)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), student)
    torch.testing.assert_close(grad_ours, grad_reference)
    assert grad_ours[0, 0, 0] == 0.0
    bounded = (torch.rand(3, 4, 4, generator=generator, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: soft_rank_cross_entropy(x, teacher[:3]), (bounded,))
