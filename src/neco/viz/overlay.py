"""Prediction figures: image | ground truth | prediction panels with a class palette."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from neco.utils.io import save_png
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


# Height in pixels of the column titles above the panels.
TITLE_HEIGHT = 16


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

    A band of TITLE_HEIGHT pixels on top names the three columns.
    """
    pictures = denormalise(images)
    canvas = Image.new("RGB", (3 * tile, TITLE_HEIGHT + tile * len(pictures)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(titles):
        draw.text((col * tile + 3, 3), title, fill=(0, 0, 0))  # PIL's built-in bitmap font: no font file
    for row, picture in enumerate(pictures):
        top = TITLE_HEIGHT + row * tile
        base = Image.fromarray(picture).resize((tile, tile), Image.BILINEAR)
        canvas.paste(base, (0, top))
        for col, labels in ((1, masks[row]), (2, predictions[row])):
            colour = Image.fromarray(colourise(labels, num_classes, ignore_index)).resize(
                (tile, tile), Image.NEAREST
            )
            canvas.paste(Image.blend(base, colour, alpha), (col * tile, top))
    return save_png(canvas, path)
