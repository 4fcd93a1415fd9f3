"""Matching of predicted cluster ids to classes, from a (C classes, K clusters) confusion matrix.

- Hungarian: `scipy.optimize.linear_sum_assignment` on the cost `1 - IoU(class c, cluster k)`
  (IoU of the pixel sets, not raw counts), i.e. the one-to-one assignment with the largest total
  IoU. With K > C the clusters left over map to no class; with K < C some classes get no cluster.
- Many-to-one: every cluster goes to the class holding the largest share of its pixels (highest
  precision n_ck / n_k; equal to the largest count, ties to the lowest class id). Empty clusters
  go to class 0, where they change nothing.

A mapping is an int64 array (K,) of class ids, -1 for "no class".
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from neco.evaluation.blocks.metrics import ConfusionMatrix, iou_from_confusion

__all__ = [
    "hungarian_match",
    "many_to_one_match",
    "apply_mapping",
    "map_ids",
    "pairwise_iou",
    "matched_miou",
]


def _as_counts(confusion: np.ndarray | torch.Tensor) -> np.ndarray:
    counts = torch.as_tensor(confusion).cpu().numpy().astype(np.float64)
    if counts.ndim != 2:
        raise ValueError(f"`confusion` must be a (classes, clusters) matrix but has shape {counts.shape}")
    return counts


def pairwise_iou(confusion: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU between every class (rows) and every cluster (columns) of a count matrix, (C, K)."""
    counts = _as_counts(confusion)
    union = counts.sum(axis=1, keepdims=True) + counts.sum(axis=0, keepdims=True) - counts
    return np.divide(counts, union, out=np.zeros_like(counts), where=union > 0)


def hungarian_match(confusion: np.ndarray | torch.Tensor) -> np.ndarray:
    """One-to-one cluster -> class mapping (K,) maximising the summed IoU; -1 for unmatched clusters."""
    iou = pairwise_iou(confusion)  # (C, K)
    rows, cols = linear_sum_assignment(1.0 - iou)
    mapping = np.full(iou.shape[1], -1, dtype=np.int64)
    mapping[cols] = rows
    return mapping


def many_to_one_match(confusion: np.ndarray | torch.Tensor) -> np.ndarray:
    """Map each cluster to the class with the highest precision (largest share of its pixels), (K,)."""
    return _as_counts(confusion).argmax(axis=0).astype(np.int64)


def apply_mapping(confusion: np.ndarray | torch.Tensor, mapping: np.ndarray) -> np.ndarray:
    """Fold a (C, K) cluster confusion into a (C, C + 1) class confusion; the last column is "no class"."""
    counts = torch.as_tensor(confusion).cpu().numpy().astype(np.int64)
    num_classes, num_clusters = counts.shape
    mapping = np.asarray(mapping, dtype=np.int64)
    if mapping.shape != (num_clusters,):
        raise ValueError(f"`mapping` must have shape ({num_clusters},) but has {mapping.shape}")
    if mapping.min(initial=0) < -1 or mapping.max(initial=0) >= num_classes:
        raise ValueError(
            f"`mapping` values must be in [-1, {num_classes}) but are {mapping.min()}..{mapping.max()}"
        )
    target = np.where(mapping < 0, num_classes, mapping)
    out = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    np.add.at(out.T, target, counts.T)  # out[:, target[k]] += counts[:, k]
    return out


def map_ids(pred: torch.Tensor, mapping: np.ndarray, unmatched: int = 255) -> torch.Tensor:
    """Class-id maps of prediction-id maps through `mapping`; ids mapped to no class (-1) become `unmatched`."""
    return torch.from_numpy(np.where(mapping < 0, unmatched, mapping))[pred]


def matched_miou(
    pred: torch.Tensor,
    gt: torch.Tensor,
    num_pred: int,
    num_classes: int,
    ignore_index: int | None,
    mode: str = "hungarian",
) -> tuple[float, np.ndarray, np.ndarray]:
    """(mIoU percent, mapping (num_pred,), per-class IoU) of prediction-id maps against GT maps (same shape).

    `mode` "hungarian" (one-to-one) or "many_to_one" (precision); the mean leaves out classes
    absent from both GT and the matched predictions.
    """
    matchers = {"hungarian": hungarian_match, "many_to_one": many_to_one_match}
    if mode not in matchers:
        raise ValueError(f"`mode` must be one of {sorted(matchers)} but is {mode!r}")
    confusion = ConfusionMatrix(num_classes, ignore_index, num_predictions=num_pred)
    confusion.update(pred, gt)
    counts = confusion.numpy()
    mapping = matchers[mode](counts)
    iou = iou_from_confusion(apply_mapping(counts, mapping))
    # all-NaN (nothing counted) is NaN, without numpy's "Mean of empty slice" warning
    miou = 100.0 * float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return miou, mapping, iou
