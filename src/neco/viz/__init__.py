"""Figures of dense features and predictions (PNG, written with PIL)."""

from neco.viz.keypoints import KeypointMatch, save_keypoint_figure
from neco.viz.overlay import colourise, save_overlay_figure
from neco.viz.palette import class_palette
from neco.viz.pca import pca_rgb, save_pca_figure

__all__ = [
    "KeypointMatch",
    "save_keypoint_figure",
    "class_palette",
    "colourise",
    "save_overlay_figure",
    "pca_rgb",
    "save_pca_figure",
]
