"""Demo figures: patch labels are majority votes, the retrieval figure scores neighbours by class."""

from __future__ import annotations

import torch
from PIL import Image

from neco.demo.figures import patch_labels, save_retrieval_figure


def test_patch_labels_take_the_majority_of_each_patch():
    masks = torch.zeros(1, 4, 6, dtype=torch.long)
    masks[0, :2, :2] = 3  # the whole first patch
    masks[0, 0, 2] = 5  # one pixel of four in the second patch: background wins
    masks[0, 2:, 4:] = 7
    masks[0, 3, 5] = 255
    labels = patch_labels(masks, 2)
    assert labels.shape == (1, 2, 3)
    assert labels.tolist() == [[[3, 0, 0], [0, 0, 7]]]


def test_retrieval_agreement_counts_same_class_neighbours(tmp_path):
    torch.manual_seed(0)
    size, patch = 16, 8
    masks = torch.zeros(6, size, size, dtype=torch.long)
    masks[:, :, patch:] = torch.arange(1, 7).view(6, 1, 1)  # right half: one class per image
    images = torch.randn(6, 3, size, size)
    onehot = torch.nn.functional.one_hot(patch_labels(masks, patch), 7).permute(0, 3, 1, 2).float()
    features = {
        "class features": (onehot, onehot + 0.01 * torch.randn_like(onehot)),
        "anti features": (onehot, -onehot),
    }
    cells = [
        (i, 0, 1) for i in range(3)
    ]  # right-half patches: each query's class lives in its own image only
    agreement = save_retrieval_figure(
        images, cells, images, features, tmp_path / "r.png",
        patch_size=patch, query_masks=masks, pool_masks=masks, top_k=2, tile=32,
    )  # fmt: skip
    assert agreement["class features"] == 1.0  # both right-half patches of the query's own image
    assert agreement["anti features"] == 0.0
    with Image.open(tmp_path / "r.png") as picture:
        assert picture.size == (32 * (1 + 2 * 2), 18 + 3 * 32)
