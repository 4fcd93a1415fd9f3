"""`neco.weights`: the checkpoint formats API (a thin alias of `neco.backbones` weights functions)."""

from __future__ import annotations

from neco.backbones.checkpoint import read_checkpoint
from neco.backbones.formats import FORMATS, convert, detect_format
from neco.backbones.loading import WeightsInfo, load_weights, read_state_dict

__all__ = [
    "FORMATS",
    "WeightsInfo",
    "convert",
    "detect_format",
    "load_weights",
    "read_checkpoint",
    "read_state_dict",
]
