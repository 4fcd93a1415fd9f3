"""Batch-accumulated confusion matrix and the IoU metrics derived from it.

Convention (pinned by tests): `matrix[t, p]` counts pixels of target class `t` predicted as `p`.
Ignore pixels are dropped before counting. The prediction axis may be wider than the target axis
(clusters before matching, or an "unmatched" column after matching): a prediction column
`p >= num_classes` is a pixel assigned to no class, so it counts as a false negative of its target
class and as nobody's false positive.

Absent classes: a class with neither target nor predicted pixels has an undefined IoU (0/0); it is
NaN in `per_class_iou()` and left out of the mean, as in the public evaluation code. A class that is
predicted but absent from the targets has IoU 0 and is included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["ConfusionMatrix", "iou_from_confusion", "per_class_mean", "percent_per_class", "seed_summary"]


def iou_from_confusion(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN) from a (C, P >= C) confusion matrix; NaN for absent classes."""
    m = torch.as_tensor(matrix).to(torch.float64).cpu().numpy()
    if m.ndim != 2 or m.shape[1] < m.shape[0]:
        raise ValueError(f"`matrix` must be (C, P) with P >= C but is {tuple(m.shape)}")
    tp = np.diag(m)  # (C,): the diagonal of the first C columns
    target_total = m.sum(axis=1)  # TP + FN, unmatched predictions included
    pred_total = m[:, : len(tp)].sum(axis=0)  # TP + FP
    union = target_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1e-300), np.nan)


class ConfusionMatrix:
    """A (num_classes, num_predictions) int64 count matrix accumulated batch by batch.

    Args:
        num_classes: number of target classes C.
        ignore_index: target value whose pixels are dropped (None: no ignore label).
        num_predictions: number of prediction ids P (defaults to C; e.g. K clusters for matching).
        device: where the counts live (the device of the predictions avoids transfers).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        num_predictions: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1 but is {num_classes}")
        num_predictions = num_classes if num_predictions is None else num_predictions
        if num_predictions < 1:
            raise ValueError(f"`num_predictions` must be >= 1 but is {num_predictions}")
        self.num_classes = num_classes
        self.num_predictions = num_predictions
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_predictions, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add the pixels of `pred` and `target` (same shape, integer ids) to the counts."""
        if pred.shape != target.shape:
            raise ValueError(
                f"`pred` must have the shape of `target` {tuple(target.shape)} but is {tuple(pred.shape)}"
            )
        pred = pred.reshape(-1).to(self.matrix.device, torch.int64)
        target = target.reshape(-1).to(self.matrix.device, torch.int64)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        if target.numel() == 0:
            return
        if int(target.min()) < 0 or int(target.max()) >= self.num_classes:
            raise ValueError(
                f"target ids must be in [0, {self.num_classes}) or the ignore index {self.ignore_index} "
                f"but range over [{int(target.min())}, {int(target.max())}]"
            )
        if int(pred.min()) < 0 or int(pred.max()) >= self.num_predictions:
            raise ValueError(
                f"predicted ids must be in [0, {self.num_predictions}) but range over "
                f"[{int(pred.min())}, {int(pred.max())}]"
            )
        flat = target * self.num_predictions + pred
        counts = torch.bincount(flat, minlength=self.num_classes * self.num_predictions)
        self.matrix += counts.reshape(self.num_classes, self.num_predictions)

    def merge_(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts in place (e.g. from another process); returns self."""
        if other.matrix.shape != self.matrix.shape:
            raise ValueError(
                f"`other` must have shape {tuple(self.matrix.shape)} but has {tuple(other.matrix.shape)}"
            )
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def numpy(self) -> np.ndarray:
        """The counts as an int64 numpy array (C, P)."""
        return self.matrix.cpu().numpy()

    def per_class_iou(self) -> np.ndarray:
        """IoU of each class (C,), NaN for classes absent from both targets and predictions."""
        if self.num_predictions < self.num_classes:
            raise ValueError(
                "per-class IoU needs matched predictions: map clusters to classes first (see matching)"
            )
        return iou_from_confusion(self.numpy())

    def miou(self) -> float:
        """Mean IoU over classes with a defined IoU, in [0, 1] (NaN when no pixel was counted)."""
        iou = self.per_class_iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels whose prediction equals the target."""
        m = self.numpy()
        total = m.sum()
        # the trace of a (C, P) matrix sums its first min(C, P) diagonal entries
        return float(np.trace(m) / total) if total > 0 else float("nan")

    def summary(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
        """mIoU (percent), pixel accuracy and per-class IoU (percent, None when absent) for a result file."""
        iou = self.per_class_iou()
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        return {
            "miou": 100.0 * self.miou(),
            "pixel_accuracy": 100.0 * self.pixel_accuracy(),
            "per_class_iou": percent_per_class(iou, names),
            "num_pixels": int(self.numpy().sum()),
            "miou_average": "present",
        }


def percent_per_class(iou: np.ndarray, class_names: list[str] | tuple[str, ...]) -> dict[str, float | None]:
    """Per-class IoU (C,) in [0, 1] as {class name: percent}, None where it is NaN (absent class)."""
    return {n: (None if np.isnan(v) else 100.0 * float(v)) for n, v in zip(class_names, iou)}


def per_class_mean(
    ious: list[np.ndarray], class_names: list[str] | tuple[str, ...]
) -> dict[str, float | None]:
    """Per-class IoU (percent) averaged over runs (seeds), None for a class absent from every run."""
    stacked = np.stack(ious)  # (runs, C)
    counted = np.isfinite(stacked).sum(0)
    return percent_per_class(
        np.where(counted > 0, np.nansum(stacked, 0) / np.maximum(counted, 1), np.nan), class_names
    )


def seed_summary(
    scores: list[float], ious: list[np.ndarray], class_names: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """mIoU mean, standard deviation and per-seed values, and the per-class IoU averaged over the seeds."""
    return {
        "miou_mean": float(np.mean(scores)),
        "miou_std": float(np.std(scores)),
        "miou_per_seed": scores,
        "per_class_iou_mean": per_class_mean(ious, class_names),
    }
