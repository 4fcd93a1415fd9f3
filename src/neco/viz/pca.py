"""PCA colour maps: the first three principal components of patch features shown as RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neco.utils.io import save_png
from neco.viz.grid import tile_grid

__all__ = ["pca_rgb", "denormalise", "save_pca_figure"]


def pca_rgb(features: torch.Tensor) -> np.ndarray:
    """(N, D, h, w) features -> (N, h, w, 3) uint8; one PCA fitted jointly on all images' patches.

    Each component is min-max scaled over all patches (1st/99th percentiles, so outliers do not wash
    out the map); the same colour means the same direction in every image.
    """
    if features.ndim != 4:
        raise ValueError(f"`features` must be (N, D, h, w) but has shape {tuple(features.shape)}")
    n, d, h, w = features.shape
    x = features.permute(0, 2, 3, 1).reshape(-1, d).double()  # (N*h*w, D)
    x = x - x.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = x @ v[: min(3, d)].T  # (N*h*w, <=3)
    if comps.shape[1] < 3:
        comps = torch.cat([comps, torch.zeros(comps.shape[0], 3 - comps.shape[1], dtype=comps.dtype)], dim=1)
    lo = torch.quantile(comps, 0.01, dim=0)
    hi = torch.quantile(comps, 0.99, dim=0)
    rgb = ((comps - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return (rgb.reshape(n, h, w, 3).numpy() * 255).round().astype(np.uint8)


def denormalise(images: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised (N, 3, H, W) -> (N, H, W, 3) uint8 for display."""
    from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = (images.detach().cpu().float() * std + mean).clamp(0, 1)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def save_pca_figure(images: torch.Tensor, features: torch.Tensor, path: str | Path, tile: int = 224) -> Path:
    """Write a PNG with one row per image: the image and its PCA colour map (nearest-upsampled)."""
    rows = [
        [Image.fromarray(picture).resize((tile, tile), Image.BILINEAR), Image.fromarray(colour_map)]
        for picture, colour_map in zip(denormalise(images), pca_rgb(features))
    ]
    return save_png(tile_grid(rows, tile), path)
