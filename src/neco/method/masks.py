"""Foreground masks from the teacher's last-layer CLS attention (optional fg/bg loss masking).

Shape legend: B = batch, H = heads, T = tokens `[CLS, registers, patches]`, (h, w) = patch grid.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

__all__ = ["attention_foreground"]

BLUR_KERNEL = 7  # the public code's kernel size; sigma 0.6 makes the tails beyond 3 taps negligible


@torch.no_grad()
def attention_foreground(
    attn: Tensor,
    num_register_tokens: int,
    grid: tuple[int, int],
    mass: float = 0.6,
    sigma: float = 0.6,
) -> Tensor:
    """Tokens holding `mass` of the blurred, head-averaged CLS attention over patches -> bool (B, h, w).

    Only the patch columns of the CLS row are used (the CLS and register columns are dropped and the
    rest renormalised), so attention parked on registers cannot move the mask.

    Args:
        attn: (B, H, T, T) attention probabilities of the last block, T = 1 + R + h*w.
        num_register_tokens: R.
        grid: (h, w), the patch grid.
        mass: fraction of the attention mass kept as foreground, in (0, 1].
        sigma: Gaussian blur sigma in tokens (0 disables the blur).
    """
    height, width = grid
    if attn.ndim != 4 or attn.shape[2] != attn.shape[3]:
        raise ValueError(f"`attn` must be (B, heads, T, T) but has shape {tuple(attn.shape)}")
    expected = 1 + num_register_tokens + height * width
    if attn.shape[-1] != expected:
        raise ValueError(
            f"`attn` must have T = 1 + {num_register_tokens} registers + {height}*{width} patches = {expected} "
            f"tokens but has {attn.shape[-1]}"
        )
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"`mass` must be in (0, 1] but is {mass}")
    if sigma < 0:
        raise ValueError(f"`sigma` must be >= 0 but is {sigma}")
    cls_to_patches = attn[:, :, 0, 1 + num_register_tokens :].float().mean(dim=1)  # (B, h*w)
    cls_to_patches = cls_to_patches / cls_to_patches.sum(dim=1, keepdim=True).clamp_min(1e-12)
    maps = cls_to_patches.reshape(-1, 1, height, width)  # (B, 1, h, w)
    if sigma > 0:
        maps = gaussian_blur(maps, kernel_size=[BLUR_KERNEL, BLUR_KERNEL], sigma=[sigma, sigma])
    flat = maps.reshape(maps.shape[0], -1)  # (B, h*w)
    values, order = flat.sort(dim=1)  # ascending
    values = values / values.sum(dim=1, keepdim=True).clamp_min(1e-12)
    keep_sorted = values.cumsum(dim=1) > (1.0 - mass)  # the largest tokens holding `mass`
    keep = torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)
    return keep.reshape(-1, height, width)  # (B, h, w)
