"""Worker for the two-rank gloo test of the reference queue (kept light: spawned processes import it)."""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from neco.method.references import ReferenceQueue


def gather_worker(rank: int, world: int, init_file: str) -> None:
    """Each rank pushes a different number of masked vectors; every rank must hold all of them, in rank order."""
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        queue = ReferenceQueue(queue_size=100, gather=True)
        queue.ensure(1, 3)
        grid = torch.full((1, 3, 2, 2), float(rank + 1))
        mask = torch.zeros(1, 2, 2, dtype=torch.bool)
        mask.view(-1)[: rank + 1] = True  # rank 0 pushes 1 vector, rank 1 pushes 2: variable counts
        assert queue.push_grid(0, grid, mask=mask) == 3
        assert queue.fill.tolist() == [3]
        assert queue.queue[0, :3, 0].tolist() == [1.0, 2.0, 2.0]  # rank order, same on every rank
    finally:
        torch_dist.destroy_process_group()
