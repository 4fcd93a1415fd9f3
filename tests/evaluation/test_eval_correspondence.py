"""Keypoint transfer and PCK (`--protocol neco`): oracle and random features, brute-force arithmetic,
resizing, the CLI; `--protocol probe3d` (the default): its blocks, option checks and the CLI. The
side-by-side run against Probe3D's own code is in test_eval_correspondence_probe3d.py."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from toy import run_protocol

from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD
from neco.cli import main
from neco.data.pairs import SyntheticPairs, write_spair_pairs
from neco.evaluation.blocks.keypoints import (
    chance_pck,
    pck_correct,
    probe3d_errors,
    probe3d_image,
    probe3d_keypoints,
    probe3d_sample,
    resize_keypoints,
    summarise_pck,
    transfer_keypoints,
)
from neco.evaluation.protocols.correspondence import CorrespondenceSettings as _Settings
from neco.viz.keypoints import KeypointMatch, save_keypoint_figure

SIZE = 64
ALPHAS = (0.05, 0.1, 0.15)


def CorrespondenceSettings(**kwargs):  # noqa: N802 - stands for the class with neco's protocol
    """neco's protocol unless `rules` (`--protocol`) is given (the tests below predate Probe3D's default)."""
    return _Settings(**{"rules": "neco", **kwargs})


def run_correspondence(fn, dataset, settings, patch_size, input_size=SIZE):
    return run_protocol("correspondence", fn, patch_size, dataset, None, settings, input_size=input_size)


def _oracle(canvas: int, pool: int):
    """Features that are the true scene coordinates: decode the coordinate-rendered pixels, then a
    Fourier encoding whose lowest frequency spans half a period over the canvas (unique maximum)."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    freqs = math.pi / canvas * 2.0 ** torch.arange(5)

    def features(images: torch.Tensor) -> torch.Tensor:
        xy = (images * std + mean)[:, :2] * canvas  # (B, 2, H, W) canonical coordinates
        xy = torch.nn.functional.avg_pool2d(xy, pool)  # (B, 2, h, w)
        angles = xy[:, :, None] * freqs[None, None, :, None, None]  # (B, 2, F, h, w)
        return torch.cat([angles.cos(), angles.sin()], dim=1).flatten(1, 2)  # (B, 4F, h, w)

    return features


class _Cached(SyntheticPairs):
    """Synthetic pairs generated once (tests read them many times)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pairs = [super(_Cached, self).pair(i) for i in range(len(self))]

    def pair(self, index):
        return self._pairs[index]


@pytest.fixture(scope="module")
def coordinate_pairs():
    return _Cached(10, SIZE, seed=0, coordinates=True)


def test_oracle_features_give_pck_100(coordinate_pairs):
    assert any(coordinate_pairs.pair(i).mirror for i in range(len(coordinate_pairs)))  # flips included
    canvas = coordinate_pairs.pair(0).canonical_size
    config = CorrespondenceSettings(alphas=ALPHAS)
    out = run_correspondence(_oracle(canvas, 1), coordinate_pairs, config, patch_size=1)
    metrics = out.result["metrics"]
    for kind in ("bbox", "image"):
        for alpha in ALPHAS:
            assert metrics[f"pck_{kind}@{alpha:g}"] == 100.0
            assert metrics[f"pck_{kind}@{alpha:g}_per_pair"] == 100.0
    assert out.result["settings"]["num_keypoints"] == sum(len(coordinate_pairs[i].src_kps) for i in range(10))
    assert not out.result["warnings"]
    for breakdown in out.result["metrics"]["per_category"].values():
        assert breakdown["pck_bbox@0.05"] == 100.0
    for groups in (out.result["metrics"]["per_category"], *out.result["metrics"]["per_variation"].values()):
        assert sum(g["num_keypoints"] for g in groups.values()) == out.result["settings"]["num_keypoints"]
        assert sum(g["num_pairs"] for g in groups.values()) == len(coordinate_pairs)


def test_oracle_on_patch_grid_is_within_half_a_cell(coordinate_pairs):
    # 8-px cells on a 64-px input: the best cell centre is <= 4 * sqrt(2) input px from the truth,
    # i.e. <= 5.66 * 64 / 48 = 7.5 px in a target of >= 48 px height: below 0.15 * 64 = 9.6 px
    canvas = coordinate_pairs.pair(0).canonical_size
    for refine in ("argmax", "softargmax"):
        config = CorrespondenceSettings(refine=refine, temperature=0.01)
        out = run_correspondence(_oracle(canvas, 8), coordinate_pairs, config, patch_size=8)
        assert out.result["settings"]["matching_grid"] == [8, 8]
        assert out.result["metrics"]["pck_image@0.15"] == 100.0


def test_thresholds_use_the_target_box_and_image(coordinate_pairs):
    # The oracle is within 0.8 px of the truth here (measured); moving the true target points 8 px
    # right makes every error 7.2-8.8 px. The target box is 100 x 40 (max side 100), the source box
    # 10 x 10, the target image at most 64 px: only the right references give this pattern.
    class Shifted:
        def __len__(self):
            return 4

        def __getitem__(self, index):
            pair = coordinate_pairs[index]
            pair.trg_kps[:, 0] += 8.0
            pair.trg_bbox = np.array([5.0, 5.0, 105.0, 45.0])
            pair.src_bbox = np.array([0.0, 0.0, 10.0, 10.0])
            return pair

    canvas = coordinate_pairs.pair(0).canonical_size
    out = run_correspondence(_oracle(canvas, 1), Shifted(), CorrespondenceSettings(), patch_size=1)
    metrics = out.result["metrics"]
    assert [metrics[f"pck_bbox@{a:g}"] for a in ALPHAS] == [0.0, 100.0, 100.0]  # 5, 10, 15 px
    assert [metrics[f"pck_image@{a:g}"] for a in ALPHAS] == [0.0, 0.0, 100.0]  # 3.2, 6.4, 9.6 px


def _chance_brute_force(dataset, grid: int, alpha: float, kind: str) -> float:
    hits, total = 0.0, 0
    for i in range(len(dataset)):
        pair = dataset[i]
        width, height = pair.trg_image.size
        box = pair.trg_bbox
        side = max(box[2] - box[0], box[3] - box[1]) if kind == "bbox" else max(width, height)
        for x, y in pair.trg_kps:
            inside = 0
            for row in range(grid):
                for col in range(grid):
                    cx, cy = (col + 0.5) / grid * width, (row + 0.5) / grid * height
                    inside += math.hypot(cx - x, cy - y) <= alpha * side
            hits += inside / grid**2
            total += 1
    return 100.0 * hits / total


def test_random_features_score_near_chance():
    dataset = _Cached(50, SIZE, seed=4)
    generator = torch.Generator().manual_seed(0)

    def random_features(images: torch.Tensor) -> torch.Tensor:
        return torch.randn(images.shape[0], 32, SIZE // 8, SIZE // 8, generator=generator)

    config = CorrespondenceSettings(alphas=ALPHAS)
    out = run_correspondence(random_features, dataset, config, patch_size=8)
    n = out.result["settings"]["num_keypoints"]
    for kind in ("bbox", "image"):
        for alpha in ALPHAS:
            chance = _chance_brute_force(dataset, 8, alpha, kind)
            assert out.result["metrics"]["chance"][f"pck_{kind}@{alpha:g}"] == pytest.approx(chance, abs=1e-6)
            # argmax over random cells is uniform: a binomial around chance (keypoints of one pair are
            # correlated, hence the generous 6 sigma)
            sigma = 100.0 * math.sqrt(chance / 100 * (1 - chance / 100) / n)
            assert abs(out.result["metrics"][f"pck_{kind}@{alpha:g}"] - chance) <= 6 * sigma + 1.0
    assert out.result["metrics"]["pck_image@0.15"] < 25.0


def test_pck_arithmetic_equals_brute_force():
    rng = np.random.default_rng(0)
    n = 60
    predicted = rng.uniform(0, 100, size=(n, 2))
    target = predicted + rng.normal(0, 8, size=(n, 2))
    box = rng.uniform(20, 80, size=n)
    image = np.full(n, 100.0)
    pair = np.sort(rng.integers(0, 9, size=n))
    distance = np.linalg.norm(predicted - target, axis=1)
    out = summarise_pck(distance, {"bbox": box, "image": image}, pair, ALPHAS)
    for alpha in ALPHAS:
        for kind, reference in (("bbox", box), ("image", image)):
            correct = [
                math.dist(predicted[i], target[i]) <= alpha * reference[i] for i in range(n)
            ]  # brute force
            assert out[f"pck_{kind}@{alpha:g}"] == pytest.approx(100.0 * sum(correct) / n)
            per_pair = []
            for p in sorted(set(pair.tolist())):
                members = [correct[i] for i in range(n) if pair[i] == p]
                per_pair.append(sum(members) / len(members))
            assert out[f"pck_{kind}@{alpha:g}_per_pair"] == pytest.approx(
                100.0 * sum(per_pair) / len(per_pair)
            )
        assert pck_correct(predicted, target, box, alpha).tolist() == [
            math.dist(predicted[i], target[i]) <= alpha * box[i] for i in range(n)
        ]
    # a point exactly on the threshold counts as correct (SPair uses <=)
    assert pck_correct(np.array([[3.0, 4.0]]), np.zeros((1, 2)), 50.0, 0.1).tolist() == [True]


def test_chance_pck_counts_cells():
    # 2 x 2 grid on a 10 x 10 input, target image 20 x 20: cell centres at 5 and 15 (target pixels)
    chance = chance_pck(
        torch.tensor([[5.0, 5.0], [10.0, 10.0]]),
        torch.tensor([40.0, 40.0]),
        0.1,
        (2, 2),
        (10, 10),
        torch.tensor([[20.0, 20.0], [20.0, 20.0]]),
    )
    # threshold 4 px: only the cell at (5, 5) for the first point; none of the four (dist 7.07) for the second
    assert chance.tolist() == [0.25, 0.0]


def test_keypoint_resizing_round_trips_and_matches_pil():
    kps = np.array([[0.0, 0.0], [12.3, 7.9], [40.0, 30.0]])
    there = resize_keypoints(kps, (40, 30), (64, 64))
    np.testing.assert_allclose(resize_keypoints(there, (64, 64), (40, 30)), kps, atol=1e-12)
    torch.testing.assert_close(
        resize_keypoints(torch.tensor(kps), (40, 30), (64, 64)), torch.tensor(there), rtol=0, atol=1e-12
    )
    # the convention agrees with PIL's resize: a linear ramp keeps its value at the moved keypoint
    ramp = np.tile((np.arange(40) + 0.5) * 6.0, (30, 1))  # value = 6 x at pixel centres
    resized = np.asarray(Image.fromarray(ramp.astype(np.float32), mode="F").resize((64, 64), Image.BILINEAR))
    x, y = resize_keypoints(np.array([[17.5, 10.5]]), (40, 30), (64, 64))[0]
    assert resized[int(y), int(x)] == pytest.approx(6.0 * (int(x) + 0.5) * 40 / 64, abs=0.2)


def test_transfer_keypoints_follows_the_grid_convention():
    # one-hot features: source cell (1, 2) matches target cell (3, 0) of a 4 x 4 grid on a 32 x 32 input
    src = torch.zeros(1, 16, 4, 4)
    trg = torch.zeros(1, 16, 4, 4)
    for r in range(4):
        for c in range(4):
            src[0, r * 4 + c, r, c] = 1.0
    trg[0, 1 * 4 + 2, 3, 0] = 1.0
    trg[0, 0, 0, 0] = 1.0  # the other cells point elsewhere
    centre = torch.tensor([[[2 * 8 + 4.0, 1 * 8 + 4.0], [float("nan"), float("nan")]]])  # cell (1, 2)
    predicted = transfer_keypoints(src, trg, centre, (32, 32))
    assert predicted[0, 0].tolist() == [4.0, 28.0]  # centre of cell (row 3, col 0)
    assert torch.isnan(predicted[0, 1]).all()  # absent keypoints stay absent
    # soft-argmax with one clear winner lands on the same centre
    soft = transfer_keypoints(src, trg, centre, (32, 32), refine="softargmax", temperature=1e-3)
    torch.testing.assert_close(soft[0, 0], torch.tensor([4.0, 28.0]))
    with pytest.raises(ValueError, match="`refine` must be one of"):
        transfer_keypoints(src, trg, centre, (32, 32), refine="nearest")
    assert transfer_keypoints(src, trg, torch.zeros(1, 0, 2), (32, 32)).shape == (1, 0, 2)


def test_source_sampling_uses_align_corners_false():
    # 1 x 4 one-hot source grid on a 32 x 8 input: cell centres at x = 4, 12, 20, 28. A keypoint at
    # x = 13 samples 7/8 of cell 1 and 1/8 of cell 2 with align_corners=False; align_corners=True
    # would give 25/32 and 7/32. Each target cell holds one of these mixtures (or cell 1 alone).
    src = torch.eye(4)[:, None, :][None]  # (1, 4, 1, 4)
    e1, e2 = torch.eye(4)[1], torch.eye(4)[2]
    trg = torch.stack([0.875 * e1 + 0.125 * e2, e1, 25 / 32 * e1 + 7 / 32 * e2], dim=1)[None, :, None]
    predicted = transfer_keypoints(src, trg, torch.tensor([[[13.0, 4.0]]]), (32, 8))  # trg (1, 4, 1, 3)
    torch.testing.assert_close(predicted[0, 0], torch.tensor([32 / 6, 4.0]))  # centre of target cell 0


def test_absent_keypoints_are_skipped_and_counted(coordinate_pairs):
    class WithAbsent:
        def __len__(self):
            return 3

        def __getitem__(self, index):
            pair = coordinate_pairs[index]
            pair.trg_kps[0] = np.nan
            return pair

    canvas = coordinate_pairs.pair(0).canonical_size
    config = CorrespondenceSettings()
    out = run_correspondence(_oracle(canvas, 1), WithAbsent(), config, patch_size=1)
    total = sum(len(coordinate_pairs[i].src_kps) for i in range(3))
    assert (
        out.result["settings"]["num_skipped_keypoints"] == 3
        and out.result["settings"]["num_keypoints"] == total - 3
    )
    assert out.result["metrics"]["pck_bbox@0.1"] == 100.0
    assert any("absent" in w for w in out.result["warnings"])


def test_config_validation():
    from neco.evaluation.options import validate

    for kwargs, match in (
        ({"refine": "mean"}, "`--refine` must be one of"),
        ({"alphas": (0.0,)}, "`--alphas`"),
        ({"upsample": 0}, "`--upsample`"),
    ):
        with pytest.raises(ValueError, match=match):
            validate(CorrespondenceSettings(**kwargs))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        run_correspondence(
            lambda x: x, SyntheticPairs(1, SIZE), CorrespondenceSettings(), patch_size=8, input_size=60
        )


def test_keypoint_figure_colours(tmp_path):
    image = np.full((40, 40, 3), 128, dtype=np.uint8)
    kps = np.array([[10.0, 10.0], [30.0, 30.0]])

    def colours(correct):
        match = KeypointMatch(image, image, kps, kps, kps, np.array(correct))
        path = save_keypoint_figure([match], tmp_path / f"{correct}.png")
        pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
        green = ((pixels[:, 1] > 150) & (pixels[:, 0] < 80)).sum()
        red = ((pixels[:, 0] > 180) & (pixels[:, 1] < 80)).sum()
        return green, red

    green, red = colours([True, True])
    assert green > 0 and red == 0
    green, red = colours([False, False])
    assert red > 0 and green == 0


@pytest.fixture(scope="module")
def spair_root(tmp_path_factory):
    return write_spair_pairs(tmp_path_factory.mktemp("spair") / "SPair-71k", 6, SIZE, seed=1, progress=False)


COMMON = ["--dataset", "spair", "--input-size", str(SIZE), "--num-workers", "0", "--no-progress"]
COMMON += ["--num-figures", "2", "--threads", "2", "--batch-size", "4"]


@pytest.mark.parametrize("backbone", [["vit_tiny", "--random-init"], ["vit_tiny_scenes"]])
def test_cli_end_to_end(spair_root, tmp_path, backbone, capsys):
    out = tmp_path / "out"
    rc = main(
        ["eval", "correspondence", "--data-root", str(spair_root), "--out", str(out), "--backbone", *backbone]
        + COMMON
        + ["--protocol", "neco", "--refine", "softargmax", "--upsample", "2"]
    )
    assert rc == 0
    assert "pck_bbox@0.1" in capsys.readouterr().out
    result = json.loads((out / "correspondence.json").read_text())
    assert result["dataset"]["splits"]["val"]["split"] == "test" and result["settings"]["num_pairs"] == 6
    assert result["settings"]["matching_grid"] == [16, 16]  # 8 x 8 patches upsampled twice
    assert result["backbone"]["name"] == backbone[0]
    assert set(result["metrics"]["per_variation"]) == {
        "viewpoint_variation",
        "scale_variation",
        "truncation",
        "occlusion",
    }
    assert 0.0 <= result["metrics"]["pck_bbox@0.1"] <= 100.0
    assert result["figures"] == ["correspondence_keypoints.png"]
    assert Image.open(out / "correspondence_keypoints.png").size[0] > 100


def test_cli_rejects_other_datasets(spair_root, tmp_path, capsys):
    args = ["eval", "correspondence", "--data-root", str(spair_root), "--out", str(tmp_path / "o")]
    args += ["--backbone", "vit_tiny", "--random-init", *COMMON]
    args[args.index("spair")] = "voc"
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "argument --dataset: invalid choice: 'voc'" in capsys.readouterr().err


# --- `--protocol probe3d` (the default); equality with Probe3D's own code: test_eval_correspondence_probe3d.py


def test_probe3d_sample_is_a_seeded_shuffle_per_category_and_bucket():
    labels = [("cat", i % 4) for i in range(11)] + [("dog", 0), ("dog", 1)]  # viewpoint 3 only in `all`
    sample = probe3d_sample(labels, 2)
    assert sorted(sample) == ["cat", "dog"] and sorted(sample["cat"]) == ["all", "vp0", "vp1", "vp2"]
    for category, buckets in sample.items():
        for bucket, members in buckets.items():
            pool = [i for i, (c, vp) in enumerate(labels) if c == category and bucket in ("all", f"vp{vp}")]
            random.seed(20)  # what Probe3D does before each shuffle
            random.shuffle(pool)
            assert members == pool[:2]
    assert sample["dog"]["vp2"] == [] and len(sample["cat"]["all"]) == 2
    assert probe3d_sample(labels, None)["cat"]["all"] == list(range(11))  # no cap: all, unshuffled


def test_probe3d_image_pads_white_at_right_and_bottom():
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    tensor, side = probe3d_image(image, 40)
    assert side == 40 and tensor.shape == (3, 40, 40)
    pixels = tensor * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    pixels = (pixels * 255).round()
    assert pixels[:, :18, :].reshape(3, -1).unique(dim=1).tolist() == [[200.0], [10.0], [10.0]]
    assert pixels[:, 22:, :].reshape(3, -1).unique(dim=1).tolist() == [[255.0], [255.0], [255.0]]
    tall, side = probe3d_image(Image.new("RGB", (10, 30), (0, 0, 0)), 60)  # resized x2 after padding to 30
    assert side == 30 and tall.shape == (3, 60, 60) and tall[:, :, -5:].gt(2.0).all()  # right band white


def test_probe3d_keypoints_are_truncated_integers():
    kps = np.array([[10.7, 3.2], [49.9, 0.0]])
    # trunc -> (10, 3), (49, 0); x 64 / 50 -> 12.8, 3.84, 62.72, 0 -> truncated
    assert probe3d_keypoints(kps, 50, 64).tolist() == [[12, 3], [62, 0]]


def test_probe3d_errors_sample_with_align_corners_true_and_place_matches_at_cell_corners():
    # 4 x 4 one-hot grids on a 30-px square: with align_corners=True, x = 20, y = 10 is exactly cell
    # (row 1, col 2) (x / 30 * 3); its feature matches target cell (row 3, col 0), predicted at (0, 3/4)
    src = torch.eye(16).reshape(16, 4, 4)
    trg = torch.zeros(16, 4, 4)
    trg[6, 3, 0] = 1.0  # channel of source cell (1, 2)
    errors, predicted = probe3d_errors(src, trg, torch.tensor([[20, 10]]), torch.tensor([[0, 24]]), 30, 0.5)
    assert predicted.tolist() == [[0.0, 0.75]]
    assert errors.tolist() == pytest.approx([0.05 / 0.5])  # |0.75 - 24 / 30| / thresh_scale
    # a keypoint between cells mixes their features (align_corners=False would mix other ones)
    errors, predicted = probe3d_errors(src, src, torch.tensor([[25, 10]]), torch.tensor([[0, 0]]), 30, 1.0)
    assert predicted.tolist() == [[0.5, 0.25]]  # cells 2 and 3 of row 1 mix 1/2 : 1/2; argmax: the first


def test_probe3d_refuses_the_other_protocols_options():
    from neco.evaluation.options import validate

    for kwargs, match in (
        ({"refine": "softargmax"}, "--refine: not used by --protocol probe3d"),
        ({"upsample": 2, "window": 3}, "--window, --upsample: not used by --protocol probe3d"),
        ({"rules": "neco", "resize": 64}, "--resize: not used by --protocol neco"),
        ({"rules": "neco", "bucket_pairs": 5}, "--bucket-pairs: not used by --protocol neco"),
        ({"rules": "bunny"}, "`--protocol` must be one of"),
    ):
        with pytest.raises(ValueError, match=match):
            validate(_Settings(**kwargs))
    with pytest.raises(ValueError, match="--input-size: not used by --protocol probe3d"):
        run_protocol(
            "correspondence", lambda x: x, 8, SyntheticPairs(1, SIZE), None, _Settings(), input_size=SIZE
        )


def test_cli_probe3d_by_default(spair_root, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "correspondence", "--data-root", str(spair_root), "--out", str(out)]
    args += ["--backbone", "vit_tiny", "--random-init", *COMMON, "--resize", "60", "--bucket-pairs", "2"]
    del args[args.index("--input-size") : args.index("--input-size") + 2]
    assert main(args) == 0
    assert "recall@0.1_all" in capsys.readouterr().out
    result = json.loads((out / "correspondence.json").read_text())
    assert result["settings"]["rules"] == "probe3d" and result["headline"]["name"] == "recall@0.1_all"
    assert result["settings"]["backbone_input_size"] == 64 and result["settings"]["matching_grid"] == [8, 8]
    per_bucket, per_category = result["metrics"]["per_bucket"], result["metrics"]["per_category"]
    assert list(per_bucket) == ["vp0", "vp1", "vp2", "all"]
    for bucket, entry in per_bucket.items():
        scored = [c[bucket] for c in per_category.values() if "recall@0.1" in c[bucket]]
        assert entry["num_categories"] == len(scored) and all(c["num_pairs"] <= 2 for c in scored)
        if scored:
            assert entry["recall@0.1"] == pytest.approx(np.mean([c["recall@0.1"] for c in scored]))
            assert result["metrics"][f"recall@0.1_{bucket}"] == entry["recall@0.1"]
    assert result["settings"]["num_pairs_evaluated"] <= result["settings"]["num_pairs"] == 6
    assert result["figures"] == ["correspondence_keypoints.png"]
