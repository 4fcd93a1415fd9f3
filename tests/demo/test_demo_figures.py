"""Demo figures: the retrieval figure scores neighbours by class."""

from __future__ import annotations

import torch
from PIL import Image

from neco.demo.figures import save_retrieval_figure
from neco.explore.page import patch_labels


def test_retrieval_agreement_counts_same_class_neighbours(tmp_path):
    torch.manual_seed(0)
    size, patch = 16, 8
    masks = torch.zeros(6, size, size, dtype=torch.long)
    masks[:, :, patch:] = torch.arange(1, 7).view(6, 1, 1)  # right half: one class per image
    images = torch.randn(6, 3, size, size)
    labels = torch.from_numpy(patch_labels(masks, patch)).view(6, size // patch, size // patch)
    onehot = torch.nn.functional.one_hot(labels, 7).permute(0, 3, 1, 2).float()
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
        assert picture.size == (32 * (1 + 2 * 2), 16 + 3 * 32)
