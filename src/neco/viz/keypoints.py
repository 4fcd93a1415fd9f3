"""Figures of transferred keypoints: source | target with a line per match, correct green / wrong red."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neco.utils.io import save_png

__all__ = ["KeypointMatch", "save_keypoint_figure"]

CORRECT_COLOUR = "#1db33f"
WRONG_COLOUR = "#e0262b"


@dataclass
class KeypointMatch:
    """One pair to draw: images, source keypoints, true and predicted target keypoints (K, 2) in pixels."""

    src_image: np.ndarray  # (H1, W1, 3) uint8
    trg_image: np.ndarray  # (H2, W2, 3) uint8
    src_kps: np.ndarray  # (K, 2) x, y; NaN rows are not drawn
    trg_kps: np.ndarray  # (K, 2) ground truth
    pred_kps: np.ndarray  # (K, 2) prediction
    correct: np.ndarray  # (K,) bool
    title: str = ""


def save_keypoint_figure(
    matches: Sequence[KeypointMatch], path: str | Path, *, row_height: float = 2.6
) -> Path:
    """Write a PNG with one row per pair: source | target, lines from each source point to its prediction.

    Predictions within the threshold are green, the others red; the true target points are white
    rings so a red line shows how far off it landed.
    """
    # the object API with no pyplot: no global backend or figure state is touched
    from matplotlib.figure import Figure

    if not matches:
        raise ValueError("`matches` must hold at least one pair but is empty")
    rows = len(matches)
    figure = Figure(figsize=(2 * row_height * 1.1, row_height * rows))
    axes = figure.subplots(rows, 1, squeeze=False)
    for axis, match in zip(axes[:, 0], matches):
        src, trg = match.src_image, match.trg_image
        height = max(src.shape[0], trg.shape[0])
        # put both images at a common height on one canvas so lines can cross from left to right
        canvas = np.full((height, src.shape[1] + trg.shape[1], 3), 255, dtype=np.uint8)
        canvas[: src.shape[0], : src.shape[1]] = src
        canvas[: trg.shape[0], src.shape[1] :] = trg
        axis.imshow(canvas)
        shift = np.array([src.shape[1], 0.0])
        # imshow puts pixel centres at integers; our coordinates put them at +0.5
        for s, t, p, ok in zip(match.src_kps, match.trg_kps, match.pred_kps, match.correct):
            if not (np.isfinite(s).all() and np.isfinite(p).all()):
                continue
            colour = CORRECT_COLOUR if ok else WRONG_COLOUR
            a, b = s - 0.5, p - 0.5 + shift
            axis.plot([a[0], b[0]], [a[1], b[1]], color=colour, linewidth=1.0)
            axis.scatter([a[0], b[0]], [a[1], b[1]], s=10, color=colour, zorder=3)
            if np.isfinite(t).all():
                g = t - 0.5 + shift
                axis.scatter(
                    [g[0]], [g[1]], s=22, facecolors="none", edgecolors="white", linewidths=0.8, zorder=4
                )
        axis.set_xlim(-0.5, canvas.shape[1] - 0.5)
        axis.set_ylim(height - 0.5, -0.5)
        axis.set_axis_off()
        if match.title:
            axis.set_title(match.title, fontsize=7)
    figure.tight_layout()
    return save_png(figure, path, dpi=110)
