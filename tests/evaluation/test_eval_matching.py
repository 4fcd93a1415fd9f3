"""Hungarian and many-to-one matching against brute force and hand computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from neco.evaluation.blocks.matching import apply_mapping, hungarian_match, many_to_one_match, pairwise_iou
from neco.evaluation.blocks.metrics import iou_from_confusion


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_equals_brute_force_over_permutations(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, size=(4, 4))
    iou = pairwise_iou(counts)
    best = max(itertools.permutations(range(4)), key=lambda perm: sum(iou[perm[k], k] for k in range(4)))
    mapping = hungarian_match(counts)
    assert sorted(mapping.tolist()) == [0, 1, 2, 3]  # one-to-one
    assert sum(iou[mapping[k], k] for k in range(4)) == pytest.approx(sum(iou[best[k], k] for k in range(4)))


def test_hungarian_uses_iou_not_counts():
    counts = np.array([[4, 2, 0], [9, 8, 3], [0, 3, 0]])
    # class totals 6, 20, 3; cluster totals 13, 13, 3.
    # identity: IoU 4/15 + 8/25 + 0 = 0.587 (counts 12); clusters -> classes (0, 2, 1):
    # IoU 4/15 + 3/13 + 3/20 = 0.647 (counts 10). Maximising IoU picks the second.
    np.testing.assert_array_equal(hungarian_match(counts), [0, 2, 1])


def test_many_to_one_hand_computed():
    # rows = classes, columns = clusters
    counts = np.array(
        [
            [8, 0, 1, 0],
            [2, 5, 0, 0],
            [0, 5, 9, 0],
        ]
    )
    # cluster 0 -> class 0 (8/10), cluster 1 -> tie 5/5 -> lowest id 1, cluster 2 -> class 2, empty cluster 3 -> 0
    np.testing.assert_array_equal(many_to_one_match(counts), [0, 1, 2, 0])
    folded = apply_mapping(counts, many_to_one_match(counts))
    np.testing.assert_array_equal(folded[:, :3], [[8, 0, 1], [2, 5, 0], [0, 5, 9]])
    iou = iou_from_confusion(folded)
    # class 0: TP 8, GT 9, predicted 10; class 1: 5, 7, 10; class 2: 9, 14, 10
    np.testing.assert_allclose(iou, [8 / 11, 5 / 12, 9 / 15])


def test_apply_mapping_puts_unmatched_clusters_in_the_last_column():
    counts = np.array([[3, 1, 2], [0, 4, 1]])
    folded = apply_mapping(counts, np.array([0, 1, -1]))
    np.testing.assert_array_equal(folded, [[3, 1, 2], [0, 4, 1]])
    with pytest.raises(ValueError, match="`mapping` must have shape"):
        apply_mapping(counts, np.array([0, 1]))
