"""Foreground-mask blocks: CLS-attention masks, GT foreground and Jaccard counts.

Masks come from `neco.method.masks.attention_foreground` (CLS row of the last block, register and
CLS columns dropped, blur, mass threshold) and may have their small connected components removed.
GT foreground = every label that is neither 0 (background, VOC format) nor the ignore label;
ignore pixels are left out of both intersection and union.
"""

from __future__ import annotations

import numpy as np
import torch

from neco.method.masks import attention_foreground

__all__ = [
    "remove_small_components",
    "foreground_masks",
    "gt_foreground",
    "jaccard_counts",
    "jaccard_summary",
]


def remove_small_components(masks: torch.Tensor, min_size: int) -> torch.Tensor:
    """Drop 8-connected foreground components smaller than `min_size` patches from bool masks (..., h, w)."""
    if min_size <= 1:
        return masks
    from scipy import ndimage

    flat = masks.reshape(-1, *masks.shape[-2:]).cpu().numpy()
    out = np.zeros_like(flat)
    for i, mask in enumerate(flat):
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        out[i] = (np.bincount(labels.ravel()) >= min_size)[labels] & mask  # `& mask`: label 0 is background
    return torch.from_numpy(out).reshape(masks.shape).to(masks.device)


def foreground_masks(
    attn: torch.Tensor,
    num_register_tokens: int,
    grid: tuple[int, int],
    *,
    mass: float = 0.6,
    sigma: float = 0.6,
    min_component: int = 0,
    per_head: bool = False,
) -> torch.Tensor:
    """Bool foreground masks (B, h, w), or (B, heads, h, w) with `per_head`, from (B, heads, T, T) attention."""
    images = attn.flatten(0, 1)[:, None] if per_head else attn  # per head: each head an image
    masks = attention_foreground(images, num_register_tokens, grid, mass=mass, sigma=sigma)
    masks = masks.unflatten(0, attn.shape[:2]) if per_head else masks  # (B, [heads,] h, w)
    return remove_small_components(masks, min_component)


def gt_foreground(masks: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground, valid) bool maps of int masks: foreground = not 0 and not ignore; valid = not ignore."""
    valid = torch.ones_like(masks, dtype=torch.bool) if ignore_index is None else masks != ignore_index
    return (masks != 0) & valid, valid


def jaccard_counts(
    pred: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-map intersection and union (...,) of bool maps (..., H, W) (broadcast), counting valid pixels only."""
    pred = pred & valid
    inter = (pred & fg).flatten(-2).sum(-1)
    union = (pred | fg).flatten(-2).sum(-1)
    return inter.to(torch.int64), union.to(torch.int64)


def jaccard_summary(inter: np.ndarray, union: np.ndarray) -> dict[str, float]:
    """Mean per-image Jaccard (empty/empty = 1) and pooled Jaccard, in percent."""
    per_image = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {
        "jaccard": 100.0 * float(per_image.mean()),
        "jaccard_global": 100.0 * float(inter.sum() / max(union.sum(), 1)),
    }
