"""The protocol registry, the result schema and the published-default switches."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from toy import oracle_features, run_protocol, write_toy_dataset

from neco.cli import main
from neco.data.base import SegmentationDataset
from neco.data.synthetic import write_scenes
from neco.evaluation import Protocol, ProtocolOutput, protocol_names, register_protocol
from neco.evaluation.blocks.file_sets import published_ids, select_subset
from neco.evaluation.options import option
from neco.evaluation.protocol import registered_protocols
from neco.evaluation.protocols.hummingbird import HummingbirdSettings
from neco.evaluation.schema import validate_result

PATCH, NUM_CLASSES = 2, 4


def test_every_shipped_protocol_is_registered():
    assert set(protocol_names()) >= {
        "hummingbird",
        "linear",
        "overcluster",
        "unsupervised",
        "attention",
        "correspondence",
        "finetune",
    }


@dataclass
class MeanSettings:
    scale: float = option(1.0, "multiplies the mean", minimum=0)


class MeanFeature(Protocol):
    """A toy protocol: the mean patch feature of the validation split, times --scale."""

    name = "toy-mean"
    summary = "mean patch feature (test only)"
    settings_class = MeanSettings

    def headline(self, metrics):
        return "mean", metrics["mean"]

    def run(self, features, data, settings, ctx):
        total = count = 0.0
        for images, _, _ in ctx.batches(data.val, "toy"):
            grid = features(images)
            total, count = total + float(grid.sum()), count + grid.numel()
        return ProtocolOutput(
            metrics={"mean": settings.scale * total / count}, settings={"count": int(count)}
        )

    def figures(self, output, features, data, out_dir):
        return []


@pytest.fixture
def toy_protocol():
    register_protocol(MeanFeature)
    yield MeanFeature
    registered_protocols().pop(MeanFeature.name)


def test_a_protocol_registered_from_outside_runs_through_neco_eval(toy_protocol, tmp_path, capsys):
    scenes = write_scenes(tmp_path / "s", 2, 2, 32, 0, progress=False)
    args = ["eval", "toy-mean", "--dataset", "scenes", "--data-root", str(scenes), "--backbone", "vit_tiny"]
    args += [
        "--random-init",
        "--input-size",
        "32",
        "--num-workers",
        "0",
        "--no-progress",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--scale", "2"]) == 0
    assert "toy-mean vit_tiny on scenes/val: mean" in capsys.readouterr().out
    result = json.loads((tmp_path / "o" / "toy-mean.json").read_text())
    validate_result(result)
    assert result["settings"]["scale"] == 2.0 and result["settings"]["count"] == 2 * 192 * 4 * 4
    assert main([*args, "--scale", "-1"]) == 2  # bounds come from the settings declaration ...
    assert "`--scale` must be >= 0 but is -1.0" in capsys.readouterr().err  # ... and name the option


def test_schema_refuses_sentences_as_settings():
    result = {
        "schema_version": 1,
        "protocol": "x",
        "dataset": {"name": "d", "splits": {"val": {"name": "d", "split": "val", "num_images": 1}}},
        "backbone": {"name": "b", "sha256": None},
        "metrics": {"m": 1},
        "headline": {"name": "m", "value": 1.0},
        "timings": {},
        "figures": [],
        "warnings": [],
        "environment": {"neco_version": "0", "torch_version": "0", "device": "cpu", "written_at": "t"},
        "settings": {"search": "faiss"},
    }
    validate_result(result)
    result["settings"]["search"] = "exact search over all patches"
    with pytest.raises(ValueError, match="result field settings/search"):
        validate_result(result)


def _permuted(dataset, perm):
    table = np.arange(256)
    table[: len(perm)] = perm
    return SegmentationDataset(
        dataset.pairs,
        name=dataset.name,
        split=dataset.split,
        class_names=dataset.class_names,
        label_map=table,
    )


def test_hungarian_matching_recovers_a_permuted_label_oracle(tmp_path):
    train = write_toy_dataset(tmp_path, "train", 8, num_classes=NUM_CLASSES, seed=0, size=(64, 64))
    val = write_toy_dataset(tmp_path, "val", 4, num_classes=NUM_CLASSES, seed=1, size=(64, 64))
    train = _permuted(train, [2, 0, 3, 1])  # the memory bank's labels are a permutation of the truth

    def run(matching):
        settings = HummingbirdSettings(memory_size=8 * 2 * 256, search="faiss", matching=matching)
        return run_protocol(
            "hummingbird",
            lambda x: oracle_features(x, PATCH, NUM_CLASSES),
            PATCH,
            val,
            train,
            settings,
            input_size=64,
            batch_size=4,
        ).result

    matched, unmatched = run("hungarian"), run("none")
    assert matched["metrics"]["miou"] > 90
    assert unmatched["metrics"]["miou"] < 10
    assert matched["metrics"]["matched_classes_changed"] == NUM_CLASSES


def test_miou_average_all_counts_absent_classes_as_zero(tmp_path):
    train = write_toy_dataset(tmp_path, "train", 6, num_classes=3, seed=0, size=(64, 64))
    val = write_toy_dataset(tmp_path, "val", 3, num_classes=3, seed=1, size=(64, 64))
    # declare a 4th class that no image holds: 'all' averages it in as 0, 'present' leaves it out
    wide = [
        SegmentationDataset(d.pairs, name="toy", split=d.split, class_names=[*d.class_names, "absent"])
        for d in (train, val)
    ]

    def miou(average):
        settings = HummingbirdSettings(memory_size=6 * 2 * 256, search="faiss", miou_average=average)
        return run_protocol(
            "hummingbird",
            lambda x: oracle_features(x, PATCH, 3, dim=4),
            PATCH,
            wide[1],
            wide[0],
            settings,
            input_size=64,
            batch_size=4,
        ).result["metrics"]["miou"]

    present, every = miou("present"), miou("all")
    assert every == pytest.approx(present * 3 / 4, rel=1e-6)


def _voc_trainaug(root, ids):
    """A VOCSegmentation-layout trainaug split holding `ids` (tiny images)."""
    for folder in ("images", "SegmentationClassAug", "SegmentationClass", "sets"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    for image_id in ids:
        Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg")
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(
            root / "SegmentationClassAug" / f"{image_id}.png"
        )
    (root / "sets" / "trainaug.txt").write_text("\n".join(ids) + "\n")
    (root / "sets" / "val.txt").write_text(ids[0] + "\n")
    (root / "sets" / "train.txt").write_text(ids[0] + "\n")


def test_fraction_1_128_on_voc_picks_exactly_the_published_ids(tmp_path):
    from neco.data import build_segmentation_dataset

    listed = published_ids("voc", "trainaug", 1 / 128, 42)
    assert listed is not None and len(listed) == 80
    others = [f"2099_{i:06d}" for i in range(40)]
    _voc_trainaug(tmp_path, sorted(listed + others))
    dataset = build_segmentation_dataset("voc", tmp_path, "trainaug")
    subset, info = select_subset(dataset, 1 / 128, 42)
    assert sorted(image.stem for image, _ in subset.pairs) == sorted(listed)
    assert info == {"fraction": 1 / 128, "subset": "published", "split_seed": 42, "num_images": 80}
    random, info = select_subset(dataset, 1 / 128, 42, "random")
    assert info["subset"] == "random" and len(random) == 1  # 120 images / 128, at least one
    with pytest.raises(
        ValueError, match="no published list for voc trainaug at fraction 1/128 and --split-seed 7"
    ):
        select_subset(dataset, 1 / 128, 7, "published")
    _voc_trainaug(tmp_path / "short", others)
    with pytest.raises(ValueError, match="80 images; 80 are missing"):
        select_subset(build_segmentation_dataset("voc", tmp_path / "short", "trainaug"), 1 / 128, 42)


def test_published_lists_ship_with_the_package_and_their_notice():
    from importlib import resources

    root = resources.files("neco.evaluation").joinpath("file_sets")
    assert root.joinpath("LICENSE.open-hummingbird-eval").is_file()
    for dataset, split in (("voc", "trainaug"), ("ade20k", "train")):
        for denominator in (128, 64, 8):
            for seed in (42, 400, 783, 1293, 4019):
                assert published_ids(dataset, split, 1 / denominator, seed), (dataset, denominator, seed)
    assert (
        published_ids("voc", "trainaug", 1 / 4, 42) is None
        and published_ids("coco", "train", 1 / 8, 42) is None
    )


def test_features_reject_bad_shapes_by_name():
    from neco.evaluation import Features

    with pytest.raises(ValueError, match="`patch_size` must be >= 1"):
        Features(lambda x: x, 0)
    with pytest.raises(ValueError, match="`precision` must be one of"):
        Features(lambda x: x, 8, precision="fp8")
    grid = Features(lambda x: torch.ones(x.shape[0], 2, 1, 1, dtype=torch.float16), 8)(
        torch.zeros(1, 3, 8, 8)
    )
    assert grid.dtype == torch.float32
