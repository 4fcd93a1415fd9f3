"""Class colours: the Pascal VOC bit-interleaved palette, extended to any number of classes."""

from __future__ import annotations

import numpy as np

__all__ = ["class_palette", "IGNORE_COLOUR"]

IGNORE_COLOUR = (255, 255, 255)


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours; class 0 is black as in VOC, neighbours get distinct colours."""
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1 but is {num_classes}")
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for c in range(num_classes):
        label, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        palette[c] = (r, g, b)
    return palette
