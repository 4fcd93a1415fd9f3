"""Reference selection: batch mode, the FIFO queue (fill count, never unfilled rows, state dict)."""

from __future__ import annotations

import pytest
import torch

from neco.method.loss import NeCoLoss
from neco.method.references import ReferenceQueue, batch_references


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_batch_references_are_a_detached_permutation_of_the_pair_vectors() -> None:
    teacher = torch.randn(3, 9, 5, requires_grad=True)  # (B, Q, C)
    refs = batch_references(teacher, 9, generator=torch.Generator().manual_seed(0))
    assert refs.shape == (3, 9, 5) and not refs.requires_grad
    flat_in = teacher.detach().reshape(-1, 5)
    flat_out = refs.reshape(-1, 5)
    # Every vector used exactly once (a permutation of the B*Q rows) ...
    assert torch.equal(flat_in[flat_in[:, 0].argsort()], flat_out[flat_out[:, 0].argsort()])
    # ... and mixed across images (not the identity).
    assert not torch.equal(flat_in, flat_out)


def test_batch_references_skip_invalid_samples_and_respect_masks() -> None:
    teacher = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)  # image 0: 0..3, image 1: 4..7
    refs = batch_references(teacher, 4, sample_valid=torch.tensor([True, False]))
    assert set(refs.flatten().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    mask = torch.tensor([[True, True, False, False], [True, True, False, False]])
    refs = batch_references(teacher, 4, query_mask=mask)
    assert set(refs.flatten().tolist()) <= {0.0, 1.0, 4.0, 5.0}


def test_queue_fill_count_is_exact_and_capped() -> None:
    queue = ReferenceQueue(queue_size=50)
    queue.ensure(2, 4)
    grid = torch.randn(3, 4, 5, 5)
    assert queue.push_grid(0, grid) == 30  # 10 per image
    assert queue.fill.tolist() == [30, 0]
    queue.push_grid(0, grid)
    assert queue.fill.tolist() == [50, 0]  # capped at the queue length, counted once per push
    assert int(queue.ptr[0]) == 10  # FIFO ring: the next write overwrites the oldest row
    # With a mask only masked vectors enter, and never more than exist.
    mask = torch.zeros(3, 5, 5, dtype=torch.bool)
    mask[0, 0, :2] = True
    assert queue.push_grid(1, grid, mask=mask) == 2
    masked_vectors = grid[0, :, 0, :2].T
    stored = queue.queue[1, :2]
    assert torch.equal(stored[stored[:, 0].argsort()], masked_vectors[masked_vectors[:, 0].argsort()])


def test_queue_never_serves_unfilled_rows() -> None:
    queue = ReferenceQueue(queue_size=1000)
    queue.ensure(1, 3)
    assert queue.sample(0, 2, 9) is None  # empty
    vectors = torch.rand(12, 3) + 1.0  # every pushed vector has entries >= 1; unfilled rows are 0
    queue.push(0, vectors)
    assert queue.sample(0, 2, 13) is None  # fewer than K filled rows
    for seed in range(20):
        refs = queue.sample(0, 4, 9, generator=torch.Generator().manual_seed(seed))
        assert refs.shape == (4, 9, 3)
        assert (refs >= 1.0).all()
        # K distinct entries per image
        assert all(len({tuple(r.tolist()) for r in image}) == 9 for image in refs)


def test_fresh_queue_falls_back_to_batch_mode_then_uses_the_queue() -> None:
    criterion = NeCoLoss(roi_size=3, reference_mode="queue", queue_size=64, queue_push_per_image=2)
    generator = torch.Generator().manual_seed(0)
    student = [torch.randn(2, 4, 4, 4, generator=generator) for _ in range(3)]
    teacher = [torch.randn(2, 4, 4, 4, generator=generator) for _ in range(2)]
    boxes = torch.tensor([0.0, 0.0, 16.0, 16.0]).expand(2, 2, 3, 2, 4).clone()
    valid = torch.ones(2, 2, 3, dtype=torch.bool)
    valid[:, 0, 0] = valid[:, 1, 1] = False
    out = criterion(student, teacher, boxes, valid, patch_size=4)
    assert out.diagnostics["queue_fill"] == 4.0 and out.diagnostics["queue_batch_fallback"] == 1.0
    for _ in range(2):
        out = criterion(student, teacher, boxes, valid, patch_size=4)
    assert out.diagnostics["queue_fill"] == 12.0 and out.diagnostics["queue_batch_fallback"] == 0.0
    assert torch.isfinite(out.loss)
    # The queue travels in the state dict and loads into a fresh loss.
    state = criterion.state_dict()
    assert state["queue.fill"].tolist() == [12, 12]
    fresh = NeCoLoss(roi_size=3, reference_mode="queue", queue_size=64)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue.queue, criterion.queue.queue) and fresh.queue.fill.tolist() == [12, 12]
    with pytest.raises(ValueError, match="queue_size"):
        NeCoLoss(roi_size=3, reference_mode="queue", queue_size=32).load_state_dict(state)


@pytest.mark.slow
def test_queue_gather_across_two_gloo_ranks(tmp_path) -> None:
    import torch.multiprocessing as mp
    from method_gather_worker import gather_worker  # a light module: spawned children import only it

    mp.spawn(gather_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_queue_mode_on_cuda() -> None:
    criterion = NeCoLoss(roi_size=3, reference_mode="queue", queue_size=64).cuda()
    student = [torch.randn(2, 4, 4, 4, device="cuda", requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(2, 4, 4, 4, device="cuda") for _ in range(2)]
    boxes = torch.tensor([0.0, 0.0, 16.0, 16.0]).expand(2, 2, 3, 2, 4).clone()
    valid = torch.ones(2, 2, 3, dtype=torch.bool)
    valid[:, 0, 0] = valid[:, 1, 1] = False
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = criterion(student, teacher, boxes, valid, patch_size=4)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert criterion.queue.queue.is_cuda and out.diagnostics["queue_batch_fallback"] == 0.0
    out.loss.backward()
    assert all(s.grad is not None and s.grad.is_cuda for s in student)
