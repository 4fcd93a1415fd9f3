"""`neco eval finetune` runs end to end on every segmentation layout, from the tiny real-layout files of the loader tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_data_ade20k import make_ade
from test_data_cityscapes import make_cityscapes
from test_data_coco import make_coco
from test_data_pascal_context import make_context
from test_data_voc import make_segmentation_layout

from neco.cli import main

# name -> (writer of the real layout, training split, number of classes)
LAYOUTS = {
    "voc": (lambda root: make_segmentation_layout(root / "VOCSegmentation"), "trainaug", 21),
    "ade20k": (make_ade, "val", 150),
    "coco-stuff-164k": (make_coco, "val", 171),
    "cityscapes": (make_cityscapes, "val", 19),
    "pascal-context": (make_context, "val", 59),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_one_step_on_each_layout(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    make, train_split, num_classes = LAYOUTS[name]
    root = make(tmp_path / "data")
    out = tmp_path / "out"
    rc = main(
        ["eval", "finetune", "--dataset", name, "--data-root", str(root), "--train-split", train_split]
        + ["--backbone", "vit_tiny", "--random-init", "--decoder", "mask", "--decoder-layers", "1"]
        + ["--iterations", "1", "--freeze-blocks", "99", "--drop-path", "0", "--input-size", "16"]
        + ["--batch-size", "2", "--num-workers", "0", "--no-progress", "--num-figures", "1"]
        + ["--device", "cpu", "--out", str(out)]
    )
    assert rc == 0, capsys.readouterr().err[-3000:]
    result = json.loads((out / "finetune.json").read_text())
    metrics = result["metrics"]
    assert metrics["training"]["steps"] == 1 and len(metrics["per_class_iou"]) == num_classes
    assert math.isfinite(metrics["miou"]) and result["dataset"]["name"] == name
    assert result["settings"]["iterations"] == 1 and (out / "finetune_predictions.png").is_file()
