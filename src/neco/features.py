"""Dense patch-feature grids from a backbone: `extract_features(model, images) -> (N, D, h, w)`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from neco.backbones.model import patch_grid
from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["extract_features", "patch_grid"]


def _pixels(images: Any, model: nn.Module) -> torch.Tensor | None:
    """PIL images / uint8 arrays (H, W, 3) or (N, H, W, 3) as a normalised (N, 3, H, W) tensor; None for others."""
    items = images if isinstance(images, list | tuple) else [images]
    if not items or not all(isinstance(i, Image.Image | np.ndarray) for i in items):
        return None
    arrays = [np.asarray(i.convert("RGB")) if isinstance(i, Image.Image) else i for i in items]
    arrays = [a[None] if a.ndim == 3 else a for a in arrays]
    if any(a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 for a in arrays):
        raise TypeError(
            "`images` arrays must be uint8 RGB, (H, W, 3) or (N, H, W, 3), but got "
            f"{sorted({f'{a.dtype} {a.shape}' for a in arrays})}"
        )
    if len({a.shape[1:3] for a in arrays}) > 1:
        raise ValueError(
            f"all images must have one size but have {sorted({a.shape[1:3] for a in arrays})}; resize them"
        )
    config = getattr(model, "config", None)
    mean = torch.tensor(getattr(config, "mean", IMAGENET_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(getattr(config, "std", IMAGENET_STD)).view(1, 3, 1, 1)
    pixels = torch.from_numpy(np.concatenate(arrays)).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W)
    return (pixels - mean) / std


def _batches(images: Any, batch_size: int, model: nn.Module) -> tuple[Iterable[torch.Tensor], int | None]:
    pixels = _pixels(images, model)
    images = images if pixels is None else pixels
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be a (N, 3, H, W) tensor but has shape {tuple(images.shape)}")
        return images.split(batch_size), (images.shape[0] + batch_size - 1) // batch_size
    if not isinstance(images, Iterable) or isinstance(images, str | bytes):
        raise TypeError(
            f"`images` must be a normalised (N, 3, H, W) float tensor, an iterable of such batches, PIL "
            f"images or uint8 RGB arrays, but is {type(images).__name__}"
        )
    total = len(images) if hasattr(images, "__len__") else None
    return images, total


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Patch-feature grids (N, D, h, w), float32 on CPU, from final-LayerNorm patch tokens (no CLS/registers).

    Args:
        model: a neco `VisionTransformer` (anything with `forward_features` and `patch_size`); run in
            eval mode without gradients, its training flag restored afterwards.
        images: a normalised float tensor (N, 3, H, W), or an iterable of such batches (all the same H, W),
            or PIL images / uint8 RGB arrays (H, W, 3) / (N, H, W, 3) of one size, normalised with the
            backbone's own mean and std (no resizing).
        batch_size: images per forward pass when `images` is a tensor.
        device: where to run; the model's device when None.
        progress: show a tqdm progress bar.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1 but is {batch_size}")
    if next(model.parameters(), None) is None:
        raise ValueError("`model` has no parameters")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    first = next(model.parameters())
    original_device, dtype = first.device, first.dtype
    model.to(device)
    batches, total = _batches(images, batch_size, model)
    grids = []
    try:
        for batch in tqdm(batches, total=total, desc="features", disable=not progress, leave=False):
            if batch.ndim != 4 or batch.shape[1] != 3:
                raise ValueError(
                    f"each batch of `images` must be (B, 3, H, W) but one has shape {tuple(batch.shape)}"
                )
            grid = patch_grid(model, batch.to(device=device, dtype=dtype, non_blocking=True))
            grids.append(grid.float().cpu())
    finally:
        model.train(was_training)
        model.to(original_device)
    if not grids:
        raise ValueError("`images` holds no image")
    shapes = {tuple(g.shape[1:]) for g in grids}
    if len(shapes) > 1:
        raise ValueError(
            f"all batches must give the same grid but gave {sorted(shapes)}; resize images to one size"
        )
    return torch.cat(grids)
