"""Distributed helpers with single-process fallbacks (the only place collectives are called)."""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

__all__ = ["is_distributed", "rank", "world_size", "all_gather_cat", "broadcast_"]


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    """This process's rank, 0 without a process group."""
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes, 1 without a process group."""
    return torch_dist.get_world_size() if is_distributed() else 1


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0 (no gradient); identity when not distributed."""
    if not is_distributed() or world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    torch_dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from `src`; no-op when not distributed."""
    if is_distributed():
        torch_dist.broadcast(tensor, src)
    return tensor
