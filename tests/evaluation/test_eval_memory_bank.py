"""Memory bank: patch label histograms, rare-class selection, per-image budget, bounded streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neco.evaluation.blocks.memory_bank import MemoryBank, patch_label_histograms, select_rare_patches
from neco.evaluation.blocks.search import build_searcher
from neco.evaluation.protocols.hummingbird import build_memory_bank, patches_per_image, predict_soft_labels


def test_patch_histograms_equal_brute_force_and_exclude_ignore():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 3, size=(2, 12, 8))
    masks[rng.random(masks.shape) < 0.3] = 255
    hist = patch_label_histograms(torch.from_numpy(masks), (3, 2), 3, 255)  # 4x4 pixel patches
    assert hist.shape == (2, 6, 3)
    for b in range(2):
        for i in range(3):
            for j in range(2):
                block = masks[b, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
                expected = [(block == c).sum() for c in range(3)]
                np.testing.assert_array_equal(hist[b, i * 2 + j].numpy(), expected)


def test_patch_histograms_reject_unknown_labels():
    with pytest.raises(ValueError, match="mask values must be in"):
        patch_label_histograms(torch.full((1, 4, 4), 7), (2, 2), 3, 255)


def test_rare_class_patches_are_preferred():
    # 16 patches: 15 of background (score 15 * U), 1 of a rare class (score 1 * U); keep 1.
    # Uniform sampling would keep the rare patch 1/16 of the time; the score keeps it P(U < 15 min(U_1..U_15))
    # = 1 - E[(1 - 15 M)+] ~ 0.63 of the time.
    hist = torch.zeros(16, 2)
    hist[:, 0] = 4
    hist[5] = torch.tensor([0.0, 4.0])
    generator = torch.Generator().manual_seed(0)
    hits = sum(select_rare_patches(hist, 1, generator).tolist() == [5] for _ in range(400))
    assert 0.5 < hits / 400 < 0.75
    # with a budget of 8 the noise cannot push the rare patch (max score 1) behind 8 background patches often
    hits = sum(5 in select_rare_patches(hist, 8, generator).tolist() for _ in range(200))
    assert hits / 200 > 0.95


def test_all_ignore_patches_are_never_kept():
    hist = torch.zeros(4, 2)
    hist[1, 0] = 3
    keep = select_rare_patches(hist, 3, torch.Generator().manual_seed(0))
    assert keep.tolist() == [1]


def test_k_per_image_and_bounded_capacity():
    assert patches_per_image(1000, 10, 2) == 50
    with pytest.raises(ValueError, match="`memory_size` must be at least"):
        patches_per_image(5, 10, 2)
    num_images, passes, dim = 6, 2, 8
    calls = []

    def stream():
        for _ in range(passes):
            for start in range(0, num_images, 4):  # batches of at most 4 images
                n = min(4, num_images - start)
                calls.append(n)
                yield torch.randn(n, dim, 4, 4), torch.randint(0, 3, (n, 16, 16))

    bank = build_memory_bank(
        stream(),
        num_images=num_images,
        memory_size=60,
        augmentation_epochs=passes,
        num_classes=3,
        ignore_index=255,
    )
    # K = 60 // (6 * 2) = 5 patches per image and pass; the bank never grows with the data
    assert bank.capacity == bank.size == num_images * passes * 5
    assert max(calls) <= 4 and sum(calls) == num_images * passes
    features, labels = bank.stored()
    torch.testing.assert_close(features.norm(dim=1), torch.ones(bank.size))
    torch.testing.assert_close(labels.float().sum(dim=1), torch.ones(bank.size), atol=1e-3, rtol=0)


def test_prediction_on_a_hand_built_bank():
    bank = MemoryBank(3, 2, 2)
    bank.add(
        torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]), torch.tensor([[4.0, 0.0], [0.0, 4.0], [2.0, 2.0]])
    )
    searcher = build_searcher(bank.stored()[0], "torch")
    # one query close to memory row 0 (cos 1 vs 0): its label is class 0 with weight ~1
    query = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    scores = predict_soft_labels(query, bank, searcher, k=3, temperature=0.02)
    torch.testing.assert_close(scores.flatten(), torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
    # a query on the diagonal is equally close to all rows (cos 0.707): mean of their labels
    query = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    scores = predict_soft_labels(query, bank, searcher, k=3, temperature=0.02)
    torch.testing.assert_close(scores.flatten(), torch.tensor([0.5, 0.5]), atol=1e-3, rtol=0)
