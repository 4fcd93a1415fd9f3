"""Pieces shared by the dataset-level runners: loaders, devices, example keeping, output type."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from neco.evaluation.transforms import PairDataset

__all__ = [
    "EvalOutput",
    "Examples",
    "make_loader",
    "resolve_device",
    "ExampleKeeper",
    "check_divisible",
    "resize_masks",
    "iterate",
]


@dataclass
class Examples:
    """A few validation items kept for figures: normalised images, masks, predictions, features."""

    images: torch.Tensor  # (n, 3, S, S)
    masks: torch.Tensor  # (n, S', S') int64
    predictions: torch.Tensor  # (n, S', S') int64
    features: torch.Tensor | None = None  # (n, D, h, w)


@dataclass
class EvalOutput:
    """What a runner returns: the JSON-ready result and the examples for figures."""

    result: dict[str, Any]
    examples: Examples | None = None
    warnings: list[str] = field(default_factory=list)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda when available else cpu; anything else is passed to torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` must be an available device but is {device} (no CUDA device found)")
    return device


def check_divisible(input_size: int, patch_size: int) -> None:
    """Raise unless the square input size is a whole number of patches."""
    if input_size % patch_size:
        raise ValueError(
            f"`input_size` must be a multiple of the patch size {patch_size} but is {input_size} "
            f"(e.g. {input_size // patch_size * patch_size} or {(input_size // patch_size + 1) * patch_size})"
        )


def make_loader(
    dataset: Any,
    transform: Any,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    epoch: int = 0,
    shuffle: bool = False,
) -> DataLoader:
    """A non-dropping loader of (images, masks, indices) with per-item seeded transforms.

    Ordered unless `shuffle`, in which case the order is seeded by (seed, epoch).
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1 but is {batch_size}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch) if shuffle else None
    return DataLoader(
        PairDataset(dataset, transform, seed=seed, epoch=epoch),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


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
        n = 0
        for key, value in tensors.items():
            if value is None:
                continue
            part = value[:take].detach().cpu()
            self.parts.setdefault(key, []).append(part)
            n = part.shape[0]
        self.count += n

    def examples(self) -> Examples | None:
        """The kept items, or None when nothing was kept."""
        if self.count == 0:
            return None
        cat = {k: torch.cat(v) for k, v in self.parts.items()}
        return Examples(
            images=cat["images"],
            masks=cat["masks"],
            predictions=cat["predictions"],
            features=cat.get("features"),
        )


def resize_masks(masks: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of int64 masks (B, H, W) -> (B, size, size)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(masks.shape[-2:]) == size:
        return masks
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(torch.int64)


def iterate(loader: DataLoader, progress: bool, desc: str) -> Iterator[Any]:
    """Iterate a loader with an optional tqdm bar."""
    from tqdm.auto import tqdm

    yield from tqdm(loader, desc=desc, disable=not progress, leave=False)
