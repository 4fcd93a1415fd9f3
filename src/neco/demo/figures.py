"""Before/after figures of the demo report: PCA maps, segmentations, nearest-patch retrieval, curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from neco.explore.page import patch_labels
from neco.utils.io import save_png
from neco.viz.grid import tile_grid
from neco.viz.overlay import colourise
from neco.viz.pca import denormalise, pca_rgb

__all__ = [
    "save_pca_comparison",
    "save_segmentation_comparison",
    "save_retrieval_figure",
    "save_curves",
    "save_diagnostics",
]


def save_pca_comparison(
    images: torch.Tensor, before: torch.Tensor, after: torch.Tensor, path: str | Path, tile: int = 160
) -> Path:
    """Rows: image | PCA map of features before | after (each model's PCA fitted on its own features)."""
    pictures = denormalise(images)
    maps_before, maps_after = pca_rgb(before), pca_rgb(after)
    rows = [
        [Image.fromarray(p), Image.fromarray(b), Image.fromarray(a)]
        for p, b, a in zip(pictures, maps_before, maps_after)
    ]
    return save_png(tile_grid(rows, tile, ["image", "PCA before", "PCA after"]), path)


def save_segmentation_comparison(
    images: torch.Tensor,
    masks: torch.Tensor,
    before: torch.Tensor,
    after: torch.Tensor,
    path: str | Path,
    *,
    num_classes: int,
    ignore_index: int | None = 255,
    tile: int = 160,
) -> Path:
    """Rows: image | ground truth | prediction before | prediction after (class colours)."""
    pictures = denormalise(images)
    rows = []
    for i, picture in enumerate(pictures):
        row = [Image.fromarray(picture)]
        row += [Image.fromarray(colourise(x[i], num_classes, ignore_index)) for x in (masks, before, after)]
        rows.append(row)
    return save_png(tile_grid(rows, tile, ["image", "ground truth", "before", "after"]), path)


def _mark(
    picture: np.ndarray, cell: tuple[int, int], patch: int, colour: tuple[int, int, int]
) -> Image.Image:
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    y, x = cell
    draw.rectangle([x * patch, y * patch, (x + 1) * patch - 1, (y + 1) * patch - 1], outline=colour, width=2)
    return image


_SAME, _OTHER, _QUERY = (0, 200, 0), (230, 0, 0), (0, 120, 255)


def save_retrieval_figure(
    query_images: torch.Tensor,
    query_cells: Sequence[tuple[int, int, int]],
    pool_images: torch.Tensor,
    features: dict[str, tuple[torch.Tensor, torch.Tensor]],
    path: str | Path,
    *,
    patch_size: int,
    query_masks: torch.Tensor,
    pool_masks: torch.Tensor,
    top_k: int = 4,
    tile: int = 128,
) -> dict[str, float]:
    """For each query patch (image index, row, col): its `top_k` nearest pool patches per model.

    A retrieved patch is framed green when its majority label (`neco.explore.page.patch_labels`) is the
    query patch's, red otherwise (an ignore-labelled patch is never a match), and each model's column
    titles give the fraction of same-class neighbours over all the queries.

    Args:
        query_images: (Q, 3, H, W) normalised images holding the query patches.
        query_cells: (image index, row, col) of each query patch on the patch grid.
        pool_images: (M, 3, H, W) normalised images to retrieve from.
        features: model label -> (query features (Q, D, h, w), pool features (M, D, h, w)).
        query_masks, pool_masks: (Q, H, W) and (M, H, W) label maps of the two image sets.

    Returns:
        model label -> fraction of the retrieved patches that share the query's class.
    """
    queries, pool = denormalise(query_images), denormalise(pool_images)
    query_labels = torch.from_numpy(patch_labels(query_masks, patch_size))  # (Q, h*w), -1: ignored
    flat_labels = torch.from_numpy(patch_labels(pool_masks, patch_size)).reshape(-1)  # (M*h*w,)
    columns: dict[str, list[list[Image.Image]]] = {}
    agreement: dict[str, float] = {}
    for label, (query_feats, pool_feats) in features.items():
        m, d, h, w = pool_feats.shape
        bank = F.normalize(pool_feats.permute(0, 2, 3, 1).reshape(-1, d), dim=1)  # (M*h*w, D)
        same, tiles = 0, []
        for index, r, c in query_cells:
            best = (bank @ F.normalize(query_feats[index, :, r, c], dim=0)).topk(top_k).indices
            neighbours = flat_labels[best]
            hits = (neighbours == query_labels[index, r * w + c]) & (neighbours >= 0)
            same += int(hits.sum())
            row = []
            for flat, hit in zip(best.tolist(), hits.tolist()):
                image_index, cell = divmod(flat, h * w)
                row.append(_mark(pool[image_index], divmod(cell, w), patch_size, _SAME if hit else _OTHER))
            tiles.append(row)
        columns[label] = tiles
        agreement[label] = same / (top_k * len(query_cells))
    titles = ["query"]
    for label in features:
        titles += [f"{label}: {agreement[label]:.0%} same class"] + [""] * (top_k - 1)
    rows = [
        [_mark(queries[index], (r, c), patch_size, _QUERY)]
        + [t for tiles in columns.values() for t in tiles[q]]
        for q, (index, r, c) in enumerate(query_cells)
    ]
    save_png(tile_grid(rows, tile, titles), path)
    return agreement


def save_curves(
    steps: Sequence[int], losses: Sequence[float], rates: Sequence[float], path: str | Path
) -> Path:
    """Loss and images/s against the training step, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_rate) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    ax_loss.plot(steps, losses, lw=1)
    ax_loss.set(xlabel="step", ylabel="NeCo loss", title="training loss")
    ax_rate.plot(steps[: len(rates)], rates, lw=1, color="tab:green")
    ax_rate.set(xlabel="step", ylabel="images / s", title="throughput")
    for ax in (ax_loss, ax_rate):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    written = save_png(fig, path)
    plt.close(fig)
    return written


def save_diagnostics(
    curves: dict[str, Sequence[float]], path: str | Path, *, references: int | None = None
) -> Path:
    """Loss beside the collapse diagnostics the trainer logs: soft-rank sharpness, patch cosine, effective rank.

    `curves` holds "step", "loss", "teacher_perm_max", "student_perm_max" (per logged step) and
    "diag_step", "mean_pairwise_cosine", "effective_rank" (every `run.diagnostics_every` steps).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_perm, ax_feat) = plt.subplots(1, 3, figsize=(13, 3.2), dpi=100)
    steps = curves["step"]
    ax_loss.plot(steps, curves["loss"], lw=1)
    if references:  # a uniform soft permutation: the loss it reaches and the P max it has
        ax_loss.axhline(
            np.log(references), ls="--", color="grey", lw=1, label=f"ln {references} (flat ranks)"
        )
        ax_perm.axhline(1 / references, ls="--", color="grey", lw=1, label=f"1/{references} (uniform)")
        ax_loss.legend(fontsize=8)
    ax_loss.set(xlabel="step", ylabel="NeCo loss", title="training loss")
    for key, colour in (("teacher_perm_max", "tab:red"), ("student_perm_max", "tab:blue")):
        if curves.get(key):
            ax_perm.plot(steps[: len(curves[key])], curves[key], lw=1, color=colour, label=key.split("_")[0])
    ax_perm.set(xlabel="step", ylabel="mean max of P", title="soft-rank sharpness (P max)")
    ax_perm.legend(fontsize=8)
    if curves.get("mean_pairwise_cosine"):
        ax_feat.plot(curves["diag_step"], curves["mean_pairwise_cosine"], lw=1, color="tab:purple")
    ax_feat.set(xlabel="step", ylabel="mean patch cosine", title="teacher patch features", ylim=(0, 1))
    if curves.get("effective_rank"):
        ax_rank = ax_feat.twinx()
        ax_rank.plot(curves["diag_step"], curves["effective_rank"], lw=1, color="tab:orange")
        ax_rank.set_ylabel("effective rank", color="tab:orange")
    for ax in (ax_loss, ax_perm, ax_feat):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    written = save_png(fig, path)
    plt.close(fig)
    return written
