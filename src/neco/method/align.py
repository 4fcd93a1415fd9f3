"""ROI-Align of token grids to overlap boxes given in a crop's resized pixel frame.

Shape legend: B = batch, D = channels, (h, w) = token grid of a crop, s = output size (7 by default).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["roi_align_grid", "roi_align_mask"]


def _check(tokens: Tensor, boxes: Tensor, patch_size: int, output_size: int) -> None:
    if tokens.ndim != 4:
        raise ValueError(f"`tokens` must be (B, D, h, w) but has shape {tuple(tokens.shape)}")
    if boxes.shape != (tokens.shape[0], 4):
        raise ValueError(
            f"`boxes` must be (B, 4) with B={tokens.shape[0]} but has shape {tuple(boxes.shape)}"
        )
    if patch_size < 1:
        raise ValueError(f"`patch_size` must be >= 1 but is {patch_size}")
    if output_size < 1:
        raise ValueError(f"`output_size` must be >= 1 but is {output_size}")


def roi_align_grid(tokens: Tensor, boxes: Tensor, patch_size: int, output_size: int = 7) -> Tensor:
    """Resample each image's token grid to a `output_size` x `output_size` grid over its box.

    Token (i, j) covers pixels `[j*p, (j+1)*p) x [i*p, (i+1)*p)`, so `aligned=True` (half-pixel offset)
    with `spatial_scale = 1/p` places samples at the right continuous positions; the adaptive sampling
    ratio makes a box on cell boundaries with one cell per bin return exactly those cells.

    Args:
        tokens: (B, D, h, w) token grid.
        boxes: (B, 4) boxes `[x1, y1, x2, y2]` in the crop's resized pixel frame, one per image.
        patch_size: p, pixels per token.
        output_size: s, the output grid side.

    Returns:
        (B, D, s, s) in the dtype of `tokens`.
    """
    _check(tokens, boxes, patch_size, output_size)
    index = torch.arange(tokens.shape[0], device=tokens.device, dtype=tokens.dtype)[:, None]
    # Token units by division, not `spatial_scale=1/p`: 1/14 is inexact, so a box of exactly k cells would
    # measure k + 3e-7 and the adaptive sampling would take 2x2 samples per bin instead of the cell itself.
    cells = boxes.to(device=tokens.device, dtype=tokens.dtype) / patch_size
    rois = torch.cat([index, cells], dim=1)  # (B, 5)
    return roi_align(
        tokens, rois, output_size=output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )  # (B, D, s, s)


def roi_align_mask(
    mask: Tensor, boxes: Tensor, patch_size: int, output_size: int = 7, threshold: float = 0.5
) -> Tensor:
    """ROI-Align a boolean (B, h, w) token mask like the features and threshold it -> bool (B, s, s)."""
    if mask.ndim != 3:
        raise ValueError(f"`mask` must be (B, h, w) but has shape {tuple(mask.shape)}")
    soft = roi_align_grid(mask[:, None].float(), boxes.float(), patch_size, output_size)  # (B, 1, s, s)
    return soft[:, 0] >= threshold
