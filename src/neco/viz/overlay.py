"""Prediction figures: image | ground truth | prediction panels with a class palette."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neco.utils.io import save_png
from neco.viz.grid import tile_grid
from neco.viz.palette import IGNORE_COLOUR, class_palette
from neco.viz.pca import denormalise

__all__ = ["colourise", "save_overlay_figure"]


def colourise(
    labels: np.ndarray | torch.Tensor, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8; ignore (and out-of-range) pixels are white."""
    labels = torch.as_tensor(labels).cpu().numpy().astype(np.int64)
    palette = class_palette(num_classes)
    out = np.empty(labels.shape + (3,), dtype=np.uint8)
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid &= labels != ignore_index
    out[valid] = palette[labels[valid]]
    out[~valid] = IGNORE_COLOUR
    return out


def save_overlay_figure(
    images: torch.Tensor,
    masks: torch.Tensor,
    predictions: torch.Tensor,
    path: str | Path,
    *,
    num_classes: int,
    ignore_index: int | None = 255,
    tile: int = 224,
    alpha: float = 0.5,
    titles: tuple[str, str, str] = ("image", "ground truth", "prediction"),
) -> Path:
    """Write a PNG with rows image | GT overlay | prediction overlay for (N, 3, H, W) images and (N, H', W') labels.

    A band of `neco.viz.grid.TITLE_HEIGHT` pixels on top names the three columns.
    """
    rows = []
    for picture, mask, prediction in zip(denormalise(images), masks, predictions):
        base = Image.fromarray(picture).resize((tile, tile), Image.BILINEAR)
        colours = [Image.fromarray(colourise(x, num_classes, ignore_index)) for x in (mask, prediction)]
        rows.append(
            [base] + [Image.blend(base, c.resize((tile, tile), Image.NEAREST), alpha) for c in colours]
        )
    return save_png(tile_grid(rows, tile, titles), path)
