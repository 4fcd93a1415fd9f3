"""Unsupervised segmentation (CBFE + community detection) with planted structure: oracle features and attention."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from toy import run_protocol

from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD
from neco.evaluation.blocks.community import (
    cooccurrence,
    cooccurrence_graph,
    glcm_offsets,
    infomap_communities,
    segment_communities,
)
from neco.evaluation.blocks.foreground import (
    cut_candidates,
    cut_jaccards,
    fit_cbfe,
    rank_clusters,
)
from neco.evaluation.blocks.matching import matched_miou
from neco.evaluation.protocols.unsupervised import UnsupervisedSettings

PATCH, SIZE, NUM_CLASSES, REGISTERS = 8, 64, 5, 2
GRID = SIZE // PATCH


class PlantedDataset:
    """Images whose red channel encodes the class of each patch-aligned object (background 0)."""

    def __init__(self, num_images: int, seed: int, ignore_border: bool = False) -> None:
        rng = np.random.default_rng(seed)
        self.labels, self.grids = [], []
        for i in range(num_images):
            grid = np.zeros((GRID, GRID), dtype=np.int64)
            for j in range(2):
                cls = 1 + (2 * i + j) % (NUM_CLASSES - 1)
                h, w = rng.integers(2, 4, size=2)
                top, left = rng.integers(0, GRID - h + 1), rng.integers(0, GRID - w + 1)
                grid[top : top + h, left : left + w] = cls
            self.grids.append(grid)
            mask = np.kron(grid, np.ones((PATCH, PATCH), dtype=np.int64))
            if ignore_border:
                mask[:, :1] = 255
            self.labels.append(mask)
        self.num_classes = NUM_CLASSES
        self.class_names = tuple(f"c{i}" for i in range(NUM_CLASSES))
        self.ignore_index = 255

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int):
        mask = self.labels[index]
        cls_map = np.kron(self.grids[index], np.ones((PATCH, PATCH)))
        red = (cls_map * 40).astype(np.uint8)
        image = np.stack([red, np.full_like(red, 100), np.full_like(red, 100)], axis=-1)
        return Image.fromarray(image), mask

    def describe(self) -> dict:
        return {"name": "planted", "split": "val", "num_images": len(self)}


def decode_classes(images: torch.Tensor) -> torch.Tensor:
    """The class id of each patch (B, h, w) read back from the red channel."""
    red = images[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # (B, H, W) in [0, 1]
    patch_red = F.avg_pool2d(red[:, None], PATCH)[:, 0]
    return (patch_red * 255 / 40).round().long().clamp(0, NUM_CLASSES - 1)


def oracle_features(noise: float = 0.05, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def features(images: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(decode_classes(images), NUM_CLASSES).permute(0, 3, 1, 2).float()  # (B, C, h, w)
        extra = torch.zeros(images.shape[0], 3, *onehot.shape[-2:])
        out = torch.cat([onehot, extra], 1)
        return out + noise * torch.randn(out.shape, generator=gen)

    return features


def random_features(images: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(images.sum().abs() * 1000) % 10_000)
    return torch.randn(images.shape[0], 8, GRID, GRID, generator=gen)


def oracle_attention(images: torch.Tensor, registers: int = REGISTERS, heads: int = 2) -> torch.Tensor:
    """CLS attention with 61% of the patch mass on the foreground; register columns get huge values."""
    fg = (decode_classes(images) > 0).flatten(1).float()  # (B, h*w)
    n_fg = fg.sum(1, keepdim=True).clamp_min(1)
    n_bg = (1 - fg).sum(1, keepdim=True).clamp_min(1)
    patches = torch.where(fg > 0, 0.61 / n_fg, 0.39 / n_bg)  # (B, h*w)
    t = 1 + registers + GRID * GRID
    attn = torch.full((images.shape[0], heads, t, t), 1.0 / t)
    attn[:, :, 0, 1 + registers :] = patches[:, None]
    attn[:, :, 0, 1 : 1 + registers] = 50.0  # must be ignored
    return attn


def small_config(**overrides) -> UnsupervisedSettings:
    settings = dict(
        target_size=SIZE,
        sigma=0.0,
        min_component=0,
        cbfe_k=20,
        cut_range=(0.05, 0.95),
        cd_ks=(8, 12),
        trials=6,
        cd_seeds=3,
        infomap_trials=2,
        fg_seeds=2,
        pca_dim=8,
        niter=20,
        nredo=3,
    )
    settings.update(overrides)
    return UnsupervisedSettings(**settings)


def run_unsupervised(grid_fn, attention_fn, train, val, registers=REGISTERS, num_figures=2):
    return run_protocol(
        "unsupervised",
        grid_fn,
        PATCH,
        val,
        train,
        small_config(),
        attention_fn=attention_fn,
        num_register_tokens=registers,
        input_size=SIZE,
        batch_size=8,
        num_figures=num_figures,
    )


def test_glcm_offsets_follow_the_rounding_rule():
    offsets = glcm_offsets((1, 2), 8)
    assert len(offsets) == 16
    assert set(offsets[:8]) == {(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)}
    # d = 2: round(2 sin 45) = round(1.41) = 1, so diagonals repeat the d = 1 ones
    assert set(offsets[8:]) == {(0, 2), (1, 1), (2, 0), (1, -1), (0, -2), (-1, -1), (-2, 0), (-1, 1)}


def test_cooccurrence_equals_brute_force_count():
    rng = np.random.default_rng(0)
    maps = rng.integers(-1, 4, size=(2, 5, 6))
    got = cooccurrence(maps, 4, (1, 2), 8)
    offsets = [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)]
    offsets += [(0, 2), (1, 1), (2, 0), (1, -1), (0, -2), (-1, -1), (-2, 0), (-1, 1)]
    expected = np.zeros((4, 4), dtype=np.int64)
    for n in range(2):
        for r in range(5):
            for c in range(6):
                for dr, dc in offsets:
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < 5 and 0 <= cc < 6 and maps[n, r, c] >= 0 and maps[n, rr, cc] >= 0:
                        expected[maps[n, r, c], maps[n, rr, cc]] += 1
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, got.T)


def test_graph_threshold_and_normalisation():
    counts = np.array([[9, 4, 0], [4, 9, 1], [0, 1, 9]])
    weights = cooccurrence_graph(counts, threshold=0.0)
    assert np.all(np.diag(weights) == 0) and np.allclose(weights, weights.T)
    assert weights[0, 1] == pytest.approx(4 / np.sqrt(4 * 5))
    cut = cooccurrence_graph(counts, threshold=0.5)
    assert cut[1, 2] == 0 and cut[0, 1] > 0


def test_infomap_recovers_planted_communities():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(3), 6)  # three communities of six nodes
    weights = np.where(truth[:, None] == truth[None], 1.0, 0.02) * rng.uniform(0.8, 1.2, (18, 18))
    weights = np.triu(weights, 1)
    weights = weights + weights.T
    found = infomap_communities(weights, seed=0)
    assert len(np.unique(found)) == 3
    for group in range(3):
        assert len(np.unique(found[truth == group])) == 1


def test_segment_communities_merges_co_occurring_clusters():
    # clusters 0,1 always neighbour each other, as do 2,3; the pairs never touch
    maps = np.full((4, 6, 6), -1)
    maps[:, :3, :3] = np.tile([[0, 1, 0], [1, 0, 1], [0, 1, 0]], (4, 1, 1))
    maps[:, 3:, 3:] = np.tile([[2, 3, 2], [3, 2, 3], [2, 3, 2]], (4, 1, 1))
    out, num = segment_communities(maps, 4, threshold=0.1, markov_time=1.0, seed=0)
    assert num == 2
    assert (out == -1).sum() == (maps == -1).sum()
    assert len(np.unique(out[:, :3, :3])) == 1 and len(np.unique(out[:, 3:, 3:])) == 1
    assert out[0, 0, 0] != out[0, 5, 5]


def test_rank_and_cut_pick_the_foreground_clusters():
    assign = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    noisy = np.array([1, 1, 1, 0, 0, 0, 1, 1], dtype=bool)
    rank, precision = rank_clusters(assign, noisy, 4)
    np.testing.assert_allclose(precision, [1, 0.5, 0, 1])
    assert set(np.argsort(rank)[:2]) == {0, 3} and np.argsort(rank)[3] == 2
    maps = torch.from_numpy(assign).reshape(2, 2, 2)
    fg = torch.from_numpy(np.isin(assign, [0, 3])).reshape(2, 2, 2)
    jac = cut_jaccards(maps, rank, fg, torch.ones_like(fg))
    assert jac.argmax() == 2 and jac[2] == pytest.approx(1.0) and jac[0] == 0.0
    assert cut_candidates(200, (0.55, 0.75)) == list(range(110, 151))


def test_cbfe_recovers_gt_foreground_from_oracle_features():
    data = PlantedDataset(10, seed=0)
    images = torch.stack([torch.from_numpy(np.array(data.load(i)[0])).permute(2, 0, 1) for i in range(10)])
    images = (images.float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
        :, None, None
    ]
    feats = oracle_features()(images)  # (N, D, h, w)
    tokens = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).numpy()
    gt = torch.from_numpy(np.stack(data.labels))
    fg, valid = gt > 0, gt != 255
    # noisy attention: GT foreground with 15% of the patches flipped
    patch_fg = decode_classes(images) > 0
    flips = torch.rand(patch_fg.shape, generator=torch.Generator().manual_seed(0)) < 0.15
    model = fit_cbfe(tokens, (GRID, GRID), patch_fg ^ flips, fg, valid, k=20, cut_range=(0.05, 0.95))
    pred, _ = model.predict(tokens, (GRID, GRID))
    assert torch.equal(pred, patch_fg)
    assert model.info["train_jaccard_at_cut"] == pytest.approx(100.0)


@pytest.fixture(scope="module")
def planted():
    return PlantedDataset(12, seed=0, ignore_border=True), PlantedDataset(8, seed=1)


def test_run_unsupervised_recovers_planted_segmentation(planted):
    train, val = planted
    out = run_unsupervised(oracle_features(), oracle_attention, train, val)
    metrics = out.result["metrics"]
    assert metrics["foreground"]["attention_val"]["jaccard"] == pytest.approx(100.0)
    assert metrics["foreground"]["cbfe_val"]["jaccard"] > 99.0
    assert metrics["foreground"]["cbfe_train"]["jaccard"] > 99.0  # ignore pixels left out
    assert metrics["cbfe"]["miou_mean"] > 90.0
    assert metrics["cd"]["miou_mean"] > 90.0
    assert len(metrics["cd"]["miou_per_seed"]) == 3 and len(metrics["cbfe"]["miou_per_seed"]) == 2
    hyper = metrics["cd"]["hyper_parameters"]
    assert hyper["k"] in (8, 12) and hyper["trials"] == 6
    settings = out.result["settings"]
    assert settings["cbfe_fit"]["cut"] >= 1 and settings["num_register_tokens"] == REGISTERS
    assert out.examples.predictions.shape == (2, SIZE, SIZE)
    assert out.examples.cbfe_foreground.shape == (2, SIZE, SIZE)


def test_run_unsupervised_random_features_score_low(planted):
    train, val = planted
    out = run_unsupervised(random_features, oracle_attention, train, val, num_figures=0)
    metrics = out.result["metrics"]
    assert metrics["cbfe"]["miou_mean"] < 50.0
    assert metrics["cd"]["miou_mean"] < 50.0
    assert out.examples is None


def test_run_unsupervised_rejects_wrong_register_count(planted):
    train, val = planted
    with pytest.raises(ValueError, match="registers"):
        run_unsupervised(oracle_features(), oracle_attention, train, val, registers=0)


def test_matched_miou_of_a_relabelled_prediction_is_100():
    gt = torch.randint(0, 3, (2, 4, 4))
    perm = torch.tensor([2, 0, 1])
    miou, mapping, _ = matched_miou(perm[gt], gt, 3, 3, None)
    assert miou == pytest.approx(100.0)
    assert torch.equal(torch.from_numpy(mapping)[perm], torch.arange(3))


def test_heavy_dependencies_are_imported_lazily():
    code = (
        "import sys, neco.evaluation.protocols.unsupervised, neco.commands.eval; "
        "print(sorted(m for m in ('optuna', 'infomap') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cd_search_shows_progress(capsys):
    from neco.evaluation.blocks.community import search_cd

    maps = np.full((4, 6, 6), -1)
    maps[:, :3, :3] = np.tile([[0, 1, 0], [1, 0, 1], [0, 1, 0]], (4, 1, 1))
    maps[:, 3:, 3:] = np.tile([[2, 3, 2], [3, 2, 3], [2, 3, 2]], (4, 1, 1))
    gt = torch.from_numpy(np.where(maps >= 0, 1, 0))
    best = search_cd({4: maps}, gt, 2, None, trials=3, progress=True)
    assert best["k"] == 4
    assert "community search" in capsys.readouterr().err
