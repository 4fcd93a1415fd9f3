"""ConfusionMatrix and IoU against brute-force numpy counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neco.evaluation.blocks.metrics import ConfusionMatrix, iou_from_confusion


def _brute_force(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(pred.ravel(), target.ravel()):
        if t != ignore:
            matrix[t, p] += 1
    return matrix


def _brute_iou(matrix: np.ndarray) -> list[float]:
    out = []
    for c in range(matrix.shape[0]):
        tp = matrix[c, c]
        fp = sum(matrix[t, c] for t in range(matrix.shape[0]) if t != c)
        fn = sum(matrix[c, p] for p in range(matrix.shape[1]) if p != c)
        out.append(float("nan") if tp + fp + fn == 0 else tp / (tp + fp + fn))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_and_iou_equal_brute_force_over_batches(seed):
    rng = np.random.default_rng(seed)
    num_classes, ignore = 5, 255
    confusion = ConfusionMatrix(num_classes, ignore)
    preds, targets = [], []
    for _ in range(3):  # accumulated batch by batch
        target = rng.integers(0, num_classes, size=(2, 7, 9))
        target[rng.random(target.shape) < 0.2] = ignore
        pred = rng.integers(0, num_classes, size=target.shape)
        confusion.update(torch.from_numpy(pred), torch.from_numpy(target))
        preds.append(pred)
        targets.append(target)
    expected = _brute_force(np.concatenate(preds), np.concatenate(targets), num_classes, ignore)
    np.testing.assert_array_equal(confusion.numpy(), expected)
    np.testing.assert_allclose(confusion.per_class_iou(), _brute_iou(expected))
    assert confusion.miou() == pytest.approx(np.nanmean(_brute_iou(expected)))
    assert confusion.pixel_accuracy() == pytest.approx(np.trace(expected) / expected.sum())


def test_absent_class_is_nan_and_left_out_of_the_mean():
    confusion = ConfusionMatrix(4, ignore_index=255)
    target = torch.tensor([0, 0, 1, 1, 255])
    pred = torch.tensor([0, 1, 1, 3, 2])  # class 2 appears only on an ignore pixel; class 3 only predicted
    confusion.update(pred, target)
    iou = confusion.per_class_iou()
    assert np.isnan(iou[2])
    assert iou[3] == 0.0  # predicted but absent from GT: IoU 0, counted
    np.testing.assert_allclose(iou[[0, 1]], [1 / 2, 1 / 3])
    assert confusion.miou() == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)


def test_unmatched_prediction_column_counts_as_false_negative():
    # 2 classes, 3 prediction columns: column 2 means "no class"
    matrix = np.array([[3, 1, 2], [0, 4, 0]])
    iou = iou_from_confusion(matrix)
    np.testing.assert_allclose(iou, [3 / (6 + 3 - 3), 4 / (4 + 5 - 4)])


def test_bad_inputs_raise_clear_errors():
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target ids must be in"):
        confusion.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="predicted ids must be in"):
        confusion.update(torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="`pred` must have the shape"):
        confusion.update(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="`num_classes` must be >= 1"):
        ConfusionMatrix(0)


def test_merge_adds_counts():
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    b.update(torch.tensor([1]), torch.tensor([1]))
    np.testing.assert_array_equal(a.merge_(b).numpy(), [[1, 1], [0, 1]])
