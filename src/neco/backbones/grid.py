"""Patch-feature grids of a backbone: the final-LayerNorm patch tokens laid out on the patch grid."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["patch_grid"]


def patch_grid(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Final-LayerNorm patch tokens of one batch (B, 3, H, W) as a grid (B, D, H // p, W // p)."""
    tokens = model.forward_features(images)["x_norm_patchtokens"]  # (B, h*w, D)
    grid_h, grid_w = images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size
    batch, count, dim = tokens.shape
    if count != grid_h * grid_w:
        raise ValueError(f"model returned {count} patch tokens but the grid is {grid_h}x{grid_w}")
    return tokens.transpose(1, 2).reshape(batch, dim, grid_h, grid_w)  # (B, D, h, w)
