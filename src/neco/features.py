"""Dense patch-feature grids from a backbone: `extract_features(model, images) -> (N, D, h, w)`."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from neco.backbones.grid import patch_grid

__all__ = ["extract_features", "patch_grid"]


def _batches(
    images: torch.Tensor | Iterable[torch.Tensor], batch_size: int
) -> tuple[Iterable[torch.Tensor], int | None]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be a (N, 3, H, W) tensor but has shape {tuple(images.shape)}")
        return images.split(batch_size), (images.shape[0] + batch_size - 1) // batch_size
    total = len(images) if hasattr(images, "__len__") else None
    return images, total


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Patch-feature grids (N, D, h, w), float32 on CPU, from final-LayerNorm patch tokens (no CLS/registers).

    Args:
        model: a neco `VisionTransformer` (anything with `forward_features` and `patch_size`); run in
            eval mode without gradients, its training flag restored afterwards.
        images: a normalised float tensor (N, 3, H, W), or an iterable of such batches (all the same H, W).
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
    batches, total = _batches(images, batch_size)
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
