"""Position-embedding interpolation exactly as the official DINO / DINOv2 models do it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["interpolate_pos_embed"]


def interpolate_pos_embed(
    pos_embed: torch.Tensor,
    height: int,
    width: int,
    patch_size: int,
    *,
    offset: float = 0.1,
    antialias: bool = False,
) -> torch.Tensor:
    """Resample the official `(1, 1 + M*M, D)` position embedding for an input of `height` x `width` pixels.

    Follows the official code to the bit: no interpolation when the grid is M x M *and* the input is
    square; otherwise bicubic, either with `scale_factor = ((h + offset) / M, (w + offset) / M)`
    (offset > 0: DINO v1 and DINOv2 without registers, no antialias) or to `size = (h, w)` (offset 0:
    DINOv2 with registers, antialias), computed in float32 and cast back.

    Args:
        pos_embed: (1, 1 + M*M, D), the first row is the CLS entry.
        height, width: input size in pixels; the grid is (height // patch_size, width // patch_size).
        patch_size: the patch size p.
        offset: the historical +0.1 kludge of the official code (0 means "interpolate to the exact size").
        antialias: passed to `F.interpolate`.

    Returns:
        (1, 1 + h*w, D) in the dtype of `pos_embed`.
    """
    num_patches = pos_embed.shape[1] - 1
    grid_h, grid_w = height // patch_size, width // patch_size
    if grid_h * grid_w == num_patches and height == width:
        return pos_embed
    side = int(math.sqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f"`pos_embed` must hold 1 + M*M tokens but holds {pos_embed.shape[1]}")
    dtype = pos_embed.dtype
    pos = pos_embed.float()
    class_pos, patch_pos = pos[:, :1], pos[:, 1:]
    dim = pos.shape[-1]
    grid = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, M, M)
    if offset:
        kwargs = {"scale_factor": ((grid_h + offset) / side, (grid_w + offset) / side)}
    else:
        kwargs = {"size": (grid_h, grid_w)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)  # (1, D, h, w)
    if grid.shape[-2:] != (grid_h, grid_w):
        raise ValueError(f"interpolated grid must be {(grid_h, grid_w)} but is {tuple(grid.shape[-2:])}")
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)  # (1, h*w, D)
    return torch.cat([class_pos, patch_pos], dim=1).to(dtype)
