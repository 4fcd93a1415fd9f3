"""Attention-map evaluation: Jaccard of thresholded CLS attention against GT foreground, with oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from toy import run_protocol

from neco.backbones import create
from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD
from neco.evaluation import EvalData, Features, evaluate
from neco.evaluation.blocks.masks import foreground_masks, jaccard_counts, remove_small_components
from neco.evaluation.protocols.attention import MaskSettings

PATCH, SIZE = 8, 64
GRID = SIZE // PATCH


class BoxDataset:
    """Images with one bright patch-aligned box (class 1) on a dark background; a strip of ignore pixels."""

    def __init__(self, num_images: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.grids = []
        for _ in range(num_images):
            grid = np.zeros((GRID, GRID), dtype=np.int64)
            h, w = rng.integers(2, 5, size=2)
            top, left = rng.integers(0, GRID - h + 1), rng.integers(0, GRID - w + 1)
            grid[top : top + h, left : left + w] = 1
            self.grids.append(grid)
        self.num_classes, self.class_names, self.ignore_index = 2, ("background", "box"), 255

    def __len__(self) -> int:
        return len(self.grids)

    def load(self, index: int):
        mask = np.kron(self.grids[index], np.ones((PATCH, PATCH), dtype=np.int64))
        grey = (mask * 200 + 20).astype(np.uint8)
        mask[-1, :] = 255  # ignore pixels never count
        return Image.fromarray(np.stack([grey] * 3, -1)), mask

    def describe(self) -> dict:
        return {"name": "boxes", "split": "val", "num_images": len(self)}


def box_patches(images: torch.Tensor) -> torch.Tensor:
    """(B, h*w) 1.0 on the box patches, decoded from the image brightness."""
    grey = images[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return (F.avg_pool2d(grey[:, None], PATCH)[:, 0] > 0.5).flatten(1).float()


def attention_from(
    patch_scores: list[torch.Tensor], registers: int, register_value: float = 0.0
) -> torch.Tensor:
    """(B, heads, T, T) with the given CLS->patch scores per head and `register_value` on register columns."""
    b = patch_scores[0].shape[0]
    t = 1 + registers + GRID * GRID
    attn = torch.full((b, len(patch_scores), t, t), 1.0 / t)
    for h, scores in enumerate(patch_scores):
        attn[:, h, 0, 1 + registers :] = scores
        attn[:, h, 0, 1 : 1 + registers] = register_value
    return attn


def fg_mass(fg: torch.Tensor, share: float) -> torch.Tensor:
    """Scores putting `share` of the mass uniformly on `fg` patches, the rest on the others."""
    n_fg = fg.sum(1, keepdim=True).clamp_min(1)
    n_bg = (1 - fg).sum(1, keepdim=True).clamp_min(1)
    return torch.where(fg > 0, share / n_fg, (1 - share) / n_bg)


CONFIG = MaskSettings(sigma=0.0)


def _no_grid(images):
    return torch.zeros(images.shape[0], 1, GRID, GRID)


def run(fn, data, registers=0, config=CONFIG, **kwargs):
    return run_protocol(
        "attention",
        _no_grid,
        PATCH,
        data,
        None,
        config,
        attention_fn=fn,
        num_register_tokens=registers,
        input_size=SIZE,
        batch_size=4,
        **kwargs,
    ).result["metrics"]


def test_oracle_attention_scores_100_and_inverted_scores_low():
    data = BoxDataset(6)
    oracle = run(lambda x: attention_from([fg_mass(box_patches(x), 0.61)], 0), data)
    assert oracle["head_merged"]["jaccard"] == pytest.approx(100.0)
    assert oracle["best_head"]["jaccard"] == pytest.approx(100.0)
    inverted = run(lambda x: attention_from([fg_mass(1 - box_patches(x), 0.9)], 0), data)
    assert inverted["head_merged"]["jaccard"] < 5.0


def test_register_columns_are_ignored():
    data = BoxDataset(4)

    def attention(x):
        return attention_from([fg_mass(box_patches(x), 0.61)], 4, register_value=100.0)

    metrics = run(attention, data, registers=4)
    assert metrics["head_merged"]["jaccard"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="registers"):
        run(attention, data, registers=0)


def test_best_head_finds_the_oracle_head_and_merged_mixes_them():
    data = BoxDataset(6, seed=2)

    def attention(x):
        box = box_patches(x)
        return attention_from([fg_mass(1 - box, 0.99), fg_mass(box, 0.61), fg_mass(1 - box, 0.99)], 0)

    metrics = run(attention, data)
    assert metrics["best_head"]["head"] == 1
    assert metrics["best_head"]["jaccard"] == pytest.approx(100.0)
    assert len(metrics["per_head"]) == 3 and metrics["per_head"][0]["jaccard"] < 5.0
    # two inverted heads outvote the oracle head once the heads are averaged
    assert metrics["head_merged"]["jaccard"] < 50.0


def test_jaccard_counts_skip_ignore_pixels():
    pred = torch.tensor([[[1, 1], [0, 0]]], dtype=torch.bool)
    fg = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.bool)
    valid = torch.tensor([[[1, 1], [0, 1]]], dtype=torch.bool)
    inter, union = jaccard_counts(pred, fg & valid, valid)
    assert inter.tolist() == [1] and union.tolist() == [2]


def test_remove_small_components():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 0, 0] = True  # one patch
    mask[0, 3:5, 3:5] = True  # four patches
    mask[0, 1, 1] = True  # touches (0, 0) diagonally: 8-connected, a component of two
    out = remove_small_components(mask, 3)
    assert out[0, 3:5, 3:5].all() and out.sum() == 4
    assert torch.equal(remove_small_components(mask, 2), mask)


def test_foreground_masks_per_head_shape():
    attn = torch.rand(2, 3, 1 + 1 + 16, 1 + 1 + 16)
    assert foreground_masks(attn, 1, (4, 4), per_head=True).shape == (2, 3, 4, 4)
    assert foreground_masks(attn, 1, (4, 4)).shape == (2, 4, 4)


@pytest.mark.parametrize("name", ["vit_tiny", "vit_tiny_reg"])
def test_real_backbone_attention_runs_with_and_without_registers(name):
    torch.manual_seed(0)
    model = create(name)
    data = BoxDataset(2)
    out = evaluate(
        "attention",
        Features.of_model(model),
        EvalData(val=data),
        input_size=SIZE,
        batch_size=2,
        num_workers=0,
        progress=False,
        num_figures=1,
    )
    metrics = out.result["metrics"]
    assert 0.0 <= metrics["head_merged"]["jaccard"] <= 100.0
    assert out.result["settings"]["num_register_tokens"] == model.num_register_tokens
    assert out.examples.predictions.shape == (1, SIZE, SIZE)


def test_backbone_without_attention_is_refused_by_name():
    features = Features(_no_grid, PATCH, name="plain-grid")
    with pytest.raises(ValueError, match="backbone plain-grid exposes no last-block attention"):
        evaluate("attention", features, EvalData(val=BoxDataset(1)), input_size=SIZE, progress=False)
