"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, "Single-Stage Semantic Segmentation from
Image Labels", CVPR 2020), in plain torch.

Coarse score maps are smoothed along the image: each pixel i looks at its 8 neighbours j at every
dilation d (the 3 x 3 ring at distance d, image borders replicated); the affinity of a neighbour is
k(i, j) = -|I_i - I_j| / (0.1 * sigma_i) per colour channel, averaged over the channels, where
sigma_i is the standard deviation of that channel over i's neighbours; a softmax over all neighbours
(of all dilations) gives the weights a_ij, and `iterations` times every score map becomes
m_i <- sum_j a_ij m_j. Scores then follow colour regions: a label that leaks over a colour edge is
pulled back to the side its colour belongs to. The affinities are fixed by the image, so the
refinement is a fixed linear smoothing of the scores, applied per class.

The dilations (1, 2, 4, 8, 12, 24) and 10 iterations are the values the open-vocabulary
segmentation evaluations that use PAMR (TCL, FreeDA, Talk2DINO) are reported to pass; the 0.1 scale
of sigma is our reading of the published method, not checked against the authors' code.

Shapes: B batch, C colour channels (3), K classes, H x W pixels, N neighbours (8 per dilation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_DILATIONS", "pamr", "pamr_affinities"]

DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)
_RING = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shifted(x: torch.Tensor, dilations: Sequence[int]) -> Iterator[torch.Tensor]:
    """x (..., H, W) moved to each of its 8 ring neighbours at every dilation in turn, borders replicated."""
    reach = max(dilations)
    height, width = x.shape[-2:]
    padded = F.pad(x, (reach, reach, reach, reach), mode="replicate")
    for d in dilations:
        for dy, dx in _RING:
            yield padded[
                ..., reach + dy * d : reach + dy * d + height, reach + dx * d : reach + dx * d + width
            ]


def _neighbours(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """x (B, C, H, W) -> its 8 ring neighbours at every dilation, (B, C, N, H, W), borders replicated."""
    return torch.stack(list(_shifted(x, dilations)), dim=2)


def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    dilations = tuple(int(d) for d in dilations)
    if not dilations or min(dilations) < 1:
        raise ValueError(f"PAMR `dilations` must be positive integers but are {dilations}")
    return dilations


def pamr_affinities(image: torch.Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS) -> torch.Tensor:
    """Neighbour weights (B, N, H, W) of an image (B, C, H, W): softmax over the neighbours of -|dI| / (0.1 sigma)."""
    if image.ndim != 4:
        raise ValueError(f"PAMR `image` must be (B, C, H, W) but is {tuple(image.shape)}")
    dilations = _check_dilations(dilations)
    image = image.float()
    around = _neighbours(image, dilations)  # (B, C, N, H, W)
    sigma = around.std(dim=2, keepdim=True)  # (B, C, 1, H, W)
    # 1e-8 keeps flat regions finite: there every neighbour is equally near, the weights uniform
    logits = -(around - image[:, :, None]).abs() / (1e-8 + 0.1 * sigma)
    return logits.mean(dim=1).softmax(dim=1)  # (B, N, H, W)


@torch.no_grad()
def pamr(
    image: torch.Tensor,
    scores: torch.Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = DEFAULT_DILATIONS,
) -> torch.Tensor:
    """Refined scores (B, K, H, W): `scores` (B, K, H, W) propagated `iterations` times along `image` (B, C, H, W).

    Any per-channel affine normalisation of the image (e.g. ImageNet mean / std) gives the same result,
    since the affinities divide colour differences by the local spread.
    """
    if scores.ndim != 4 or image.shape[0] != scores.shape[0] or image.shape[-2:] != scores.shape[-2:]:
        raise ValueError(
            f"PAMR needs `image` (B, C, H, W) and `scores` (B, K, H, W) of the same B, H, W but got "
            f"{tuple(image.shape)} and {tuple(scores.shape)}"
        )
    if int(iterations) < 0:
        raise ValueError(f"PAMR `iterations` must be >= 0 but is {iterations}")
    dilations = _check_dilations(dilations)
    weights = pamr_affinities(image, dilations)  # (B, N, H, W)
    refined = scores.float()
    for _ in range(int(iterations)):
        # one neighbour at a time: (B, K, N, H, W) at once is too large for many classes at full size
        total = torch.zeros_like(refined)
        for index, window in enumerate(_shifted(refined, dilations)):
            total += weights[:, index : index + 1] * window
        refined = total
    return refined.to(scores.dtype)
