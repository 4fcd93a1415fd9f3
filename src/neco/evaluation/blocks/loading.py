"""Loading blocks shared by the protocols: kept examples and whole splits of tokens for clustering."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neco.evaluation.blocks.transforms import resize_ids

__all__ = ["Examples", "ExampleKeeper", "TokenSplit", "collect_tokens"]


@dataclass
class Examples:
    """A few validation items kept for figures: normalised images, masks, predictions, features."""

    images: torch.Tensor  # (n, 3, S, S)
    masks: torch.Tensor  # (n, S', S') int64
    predictions: torch.Tensor  # (n, S', S') int64
    features: torch.Tensor | None = None  # (n, D, h, w)


class ExampleKeeper:
    """Collect the first `limit` items of a stream of batches (bounded memory)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, int(limit))
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.count = 0

    def offer(self, **tensors: torch.Tensor | None) -> None:
        """Keep the leading items of this batch while fewer than `limit` are held."""
        take = self.limit - self.count
        if take <= 0:
            return
        kept = {key: value[:take].detach().cpu() for key, value in tensors.items() if value is not None}
        for key, part in kept.items():
            self.parts.setdefault(key, []).append(part)
        self.count += max((len(part) for part in kept.values()), default=0)  # items of one batch

    def examples(self) -> Examples | None:
        """The kept items, or None when nothing was kept."""
        if self.count == 0:
            return None
        return Examples(**{k: torch.cat(v) for k, v in self.parts.items()})


@dataclass
class TokenSplit:
    """A whole split in memory for clustering: tokens, GT, grid, figure images, optional noisy masks."""

    tokens: np.ndarray  # (N*h*w, D) float16
    gt: torch.Tensor  # (N, T, T) int64
    grid: tuple[int, int]
    images: torch.Tensor  # (n, 3, S, S) kept for figures
    noisy: torch.Tensor | None = None  # (N, h, w) bool, from `noisy_fn`


def collect_tokens(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, Any]],
    features: Callable[[torch.Tensor], torch.Tensor],
    num_images: int,
    target_size: int,
    keep: int,
    noisy_fn: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None = None,
) -> TokenSplit:
    """Patch tokens of every image (float16, allocated once), GT at `target_size`, and `noisy_fn(images, grid)`."""
    tokens: np.ndarray | None = None
    gts, noisy = [], []
    keeper = ExampleKeeper(keep)
    grid, row = (0, 0), 0
    for images, masks, _ in batches:
        grids = features(images).float().cpu()  # (B, D, h, w)
        grid = (int(grids.shape[-2]), int(grids.shape[-1]))
        if tokens is None:
            tokens = np.empty((num_images * grid[0] * grid[1], grids.shape[1]), dtype=np.float16)
        flat = grids.permute(0, 2, 3, 1).reshape(-1, grids.shape[1])  # (B*h*w, D)
        tokens[row : row + flat.shape[0]] = flat.numpy()
        row += flat.shape[0]
        gts.append(resize_ids(masks, target_size))
        if noisy_fn is not None:
            noisy.append(noisy_fn(images, grid))
        keeper.offer(images=images)
    if tokens is None:
        raise ValueError("the split holds no image")
    images = torch.cat(keeper.parts["images"]) if keeper.count else torch.empty(0)
    return TokenSplit(tokens, torch.cat(gts), grid, images, torch.cat(noisy) if noisy else None)
