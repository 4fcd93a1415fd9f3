"""The NeCo loss (queue references, the published setting) reads the device a fixed number of times per step,
however many crop pairs there are. (Batch-mode references size their pool from the data: a read per pair.)"""

from __future__ import annotations

import pytest
import torch

from neco.method.loss import NeCoLoss

# Tensor methods that copy a device value to the host (a CUDA synchronisation on a GPU).
_HOST_READS = ["item", "tolist", "cpu", "__bool__", "__int__", "__float__"]


def _problem(num_local: int, batch: int = 2, channels: int = 6):
    generator = torch.Generator().manual_seed(num_local)
    num_views = 2 + num_local
    teacher = [torch.randn(batch, channels, 6, 6, generator=generator) for _ in range(2)]
    student = teacher + [torch.randn(batch, channels, 3, 3, generator=generator) for _ in range(num_local)]
    student = [g.clone().requires_grad_() for g in student]
    boxes = torch.zeros(batch, 2, num_views, 2, 4)
    boxes[..., 0, :] = torch.tensor([0.0, 0.0, 16.0, 16.0])  # in g's 24-px frame (patch 4)
    boxes[..., 1, :] = torch.tensor([0.0, 0.0, 8.0, 8.0])
    valid = torch.ones(batch, 2, num_views, dtype=torch.bool)
    valid[0, 0, -1] = False  # one sample of one pair carries no loss
    return student, teacher, boxes, valid


def _count_host_reads(monkeypatch: pytest.MonkeyPatch, num_local: int) -> tuple[int, torch.Tensor]:
    student, teacher, boxes, valid = _problem(num_local)
    loss_fn = NeCoLoss(roi_size=3, reference_mode="queue", queue_size=64)
    generator = torch.Generator().manual_seed(0)
    loss_fn(
        student, teacher, boxes, valid, 4, generator=generator
    )  # fills the queue: the next step samples it
    counts = {"n": 0}
    for name in _HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    out = loss_fn(student, teacher, boxes, valid, 4, generator=generator)
    assert out.diagnostics["queue_batch_fallback"] == 0.0  # the queue served the references
    reads = counts["n"]
    monkeypatch.undo()
    return reads, out.loss


def test_host_reads_do_not_grow_with_the_number_of_crop_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    few, loss_few = _count_host_reads(monkeypatch, num_local=1)  # 2 x 2 pairs
    many, loss_many = _count_host_reads(monkeypatch, num_local=6)  # 2 x 7 pairs
    assert torch.isfinite(loss_few) and torch.isfinite(loss_many)
    assert few == many, f"{few} host reads with 4 crop pairs but {many} with 14"
    assert few <= 12  # queue pushes, fills, the row masks and one read of the diagnostics
