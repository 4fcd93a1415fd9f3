"""Reference patches for the NeCo loss: from the current batch, or from a FIFO queue of teacher vectors.

Shape legend: B = batch, C = channels, s = ROI side, Q = s*s queries per image, K = references per image,
G = global crops (one queue each), L = queue length.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from neco.utils import dist

__all__ = ["ReferenceQueue", "batch_references"]


def _randperm(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


@torch.no_grad()
def batch_references(
    teacher: Tensor,
    num_references: int,
    *,
    sample_valid: Tensor | None = None,
    query_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Batch-mode references: the ROI-aligned teacher vectors of the pair, detached, permuted, K per image.

    With every sample valid and no mask this is one random permutation of the B*Q vectors cut into B
    groups, so each image gets references from other images too. Invalid samples never serve
    references; with `query_mask` only masked vectors do, unless fewer than K exist (then all valid ones).
    The pool is tiled when it holds fewer than B*K vectors.

    Args:
        teacher: (B, Q, C) aligned teacher vectors.
        num_references: K.
        sample_valid: optional (B,) bool, samples whose overlap is usable.
        query_mask: optional (B, Q) bool, positions allowed as references (fg or bg).
        generator: optional random generator.

    Returns:
        (B, K, C) detached references.
    """
    batch, num_queries, channels = teacher.shape
    rows = teacher.detach().reshape(batch * num_queries, channels)  # (B*Q, C)
    allowed = torch.ones(batch, num_queries, dtype=torch.bool, device=teacher.device)
    if sample_valid is not None:
        allowed &= sample_valid.to(teacher.device)[:, None]
    if not allowed.any():
        # No usable sample: the pair carries no loss; any vectors will do for a well-formed output.
        allowed = torch.ones_like(allowed)
    if query_mask is not None:
        masked = allowed & query_mask.to(teacher.device)
        if int(masked.sum()) >= num_references:
            allowed = masked
    pool = rows[allowed.reshape(-1)]  # (M, C)
    pool = pool[_randperm(pool.shape[0], pool.device, generator)]
    needed = batch * num_references
    if pool.shape[0] < needed:
        pool = pool.repeat((needed + pool.shape[0] - 1) // pool.shape[0], 1)
    return pool[:needed].reshape(batch, num_references, channels)  # (B, K, C)


class ReferenceQueue(nn.Module):
    """One FIFO queue of teacher head vectors per global crop, kept in buffers (saved by `state_dict`).

    `queue` (G, L, C), `fill` (G,) = number of filled rows (rows `[0, fill)` are filled), `ptr` (G,) = next
    write row. The buffers are created on the first push (G and C are not known before); loading a state
    dict into a fresh queue creates them with the saved shapes. Each process keeps its own queue; with
    `gather=True` and torch.distributed initialised, the vectors pushed by every rank are all-gathered
    and pushed on every rank.
    """

    def __init__(self, queue_size: int = 8192, gather: bool = False) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"`queue_size` must be >= 1 but is {queue_size}")
        self.queue_size = int(queue_size)
        self.gather = bool(gather)
        self.register_buffer("queue", torch.zeros(0, self.queue_size, 0))
        self.register_buffer("fill", torch.zeros(0, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(0, dtype=torch.long))

    @property
    def initialised(self) -> bool:
        """True once the buffers exist (after the first push or a state-dict load)."""
        return self.queue.shape[0] > 0

    def ensure(self, num_queues: int, channels: int, device: torch.device | None = None) -> None:
        """Create the buffers for `num_queues` queues of `channels`-d vectors, or check they match."""
        if self.initialised:
            if self.queue.shape[0] != num_queues or self.queue.shape[2] != channels:
                raise ValueError(
                    f"the reference queue holds {self.queue.shape[0]} queues of {self.queue.shape[2]}-d vectors "
                    f"but {num_queues} global crops of {channels}-d vectors were given"
                )
            return
        device = device if device is not None else self.queue.device
        self.queue = torch.zeros(num_queues, self.queue_size, channels, device=device)
        self.fill = torch.zeros(num_queues, dtype=torch.long, device=device)
        self.ptr = torch.zeros(num_queues, dtype=torch.long, device=device)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The buffers are created lazily: take the saved shapes before the default copy checks them.
        saved = state_dict.get(prefix + "queue")
        if saved is not None and saved.shape != self.queue.shape:
            if saved.shape[1] != self.queue_size:
                raise ValueError(
                    f"the saved reference queue has length {saved.shape[1]} but `queue_size` is {self.queue_size}"
                )
            self.queue = torch.zeros_like(saved, device=self.queue.device, dtype=self.queue.dtype)
            self.fill = torch.zeros(saved.shape[0], dtype=torch.long, device=self.queue.device)
            self.ptr = torch.zeros(saved.shape[0], dtype=torch.long, device=self.queue.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def push(self, index: int, vectors: Tensor) -> int:
        """Append (N, C) vectors to queue `index`, overwriting the oldest rows; returns the number pushed."""
        if vectors.ndim != 2 or vectors.shape[1] != self.queue.shape[2]:
            raise ValueError(
                f"`vectors` must be (N, {self.queue.shape[2]}) but has shape {tuple(vectors.shape)}"
            )
        vectors = vectors[-self.queue_size :].to(self.queue.dtype)  # only the newest L can be kept
        count = vectors.shape[0]
        if count == 0:
            return 0
        start = int(self.ptr[index])
        rows = (start + torch.arange(count, device=self.queue.device)) % self.queue_size
        self.queue[index, rows] = vectors.to(self.queue.device)
        self.ptr[index] = (start + count) % self.queue_size
        # Added once per push and capped, so `fill` is exactly the number of rows ever written (<= L).
        self.fill[index] = min(int(self.fill[index]) + count, self.queue_size)
        return count

    @torch.no_grad()
    def push_grid(
        self,
        index: int,
        grid: Tensor,
        mask: Tensor | None = None,
        per_image: int = 10,
        generator: torch.Generator | None = None,
    ) -> int:
        """Push min(per_image*B, L) random vectors of a (B, C, h, w) teacher grid (masked ones only if `mask`).

        Returns the number of vectors pushed on this process (after the optional all-gather).
        """
        if not self.initialised:
            raise RuntimeError("ReferenceQueue.ensure(num_queues, channels) must be called before push_grid")
        batch, channels = grid.shape[:2]
        rows = grid.detach().flatten(2).transpose(1, 2).reshape(-1, channels)  # (B*h*w, C)
        if mask is not None:
            if mask.shape != (batch, *grid.shape[2:]):
                raise ValueError(
                    f"`mask` must be (B, h, w) = {(batch, *grid.shape[2:])} but is {tuple(mask.shape)}"
                )
            rows = rows[mask.reshape(-1).to(rows.device)]
        count = min(per_image * batch, self.queue_size, rows.shape[0])
        chosen = rows[_randperm(rows.shape[0], rows.device, generator)[:count]]  # (count, C)
        if self.gather and dist.is_distributed():
            chosen = _gather_variable(chosen)
        return self.push(index, chosen)

    @torch.no_grad()
    def sample(
        self,
        index: int,
        batch: int,
        num_references: int,
        generator: torch.Generator | None = None,
        filled: int | None = None,
    ) -> Tensor | None:
        """K distinct filled rows per image -> (B, K, C), or None while fewer than K rows are filled.

        `filled` is `fill[index]` when the caller already read it (saves a device-to-host sync).
        """
        if not self.initialised:
            return None
        filled = int(self.fill[index]) if filled is None else int(filled)
        if filled < num_references:
            return None
        device = generator.device if generator is not None else self.queue.device
        scores = torch.rand(batch, filled, generator=generator, device=device)
        picks = scores.argsort(dim=1)[:, :num_references].to(self.queue.device)  # (B, K) in [0, fill)
        return self.queue[index][picks]  # (B, K, C)


def _gather_variable(vectors: Tensor) -> Tensor:
    """All-gather (N_r, C) vectors whose N_r differs per rank (fg masks), keeping rank order."""
    count = torch.tensor([vectors.shape[0]], device=vectors.device)
    counts = dist.all_gather_cat(count)  # (world,)
    largest = int(counts.max())
    padded = torch.zeros(largest, vectors.shape[1], device=vectors.device, dtype=vectors.dtype)
    padded[: vectors.shape[0]] = vectors
    gathered = dist.all_gather_cat(padded).reshape(len(counts), largest, -1)  # (world, N_max, C)
    return torch.cat([gathered[r, : int(n)] for r, n in enumerate(counts.tolist())])
