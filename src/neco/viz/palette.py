"""Class colours: the Pascal VOC bit-interleaved palette, extended to any number of classes."""

from __future__ import annotations

import numpy as np

from neco.data.synthetic import voc_colours

__all__ = ["class_palette", "IGNORE_COLOUR"]

IGNORE_COLOUR = (255, 255, 255)


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours; class 0 is black as in VOC, neighbours get distinct colours."""
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1 but is {num_classes}")
    return voc_colours(num_classes)
