"""`neco eval finetune` runs on every segmentation layout, from the tiny real-layout files of the loader tests."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_data_ade20k import make_ade
from test_data_cityscapes import make_cityscapes
from test_data_coco import make_coco
from test_data_pascal_context import make_context
from test_data_voc import make_segmentation_layout

import neco.training.finetune  # noqa: F401  (registers the protocol's trainer)
from neco.backbones import create
from neco.evaluation import Features, evaluate, get_protocol
from neco.evaluation.protocols.finetune import FinetuneSettings

LAYOUTS = {
    "voc": (lambda root: make_segmentation_layout(root / "VOCSegmentation"), "trainaug", 21),
    "ade20k": (make_ade, "val", 150),
    "coco-stuff27": (make_coco, "val", 27),
    "cityscapes": (make_cityscapes, "val", 19),
    "pascal-context": (make_context, "val", 59),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_one_step_on_each_layout(tmp_path: Path, name: str) -> None:
    make, train_split, num_classes = LAYOUTS[name]
    root = make(tmp_path / "data")
    settings = FinetuneSettings(
        decoder="mask", decoder_layers=1, iterations=1, freeze_blocks=99, drop_path=0.0
    )
    protocol = get_protocol("finetune")
    data = protocol.load_data(name, root, train_split, "val", settings)
    torch.manual_seed(0)
    result = evaluate(
        "finetune", Features.of_model(create("vit_tiny", pretrained=False)), data, settings,
        input_size=16, batch_size=2, num_workers=0, progress=False, num_figures=1, out_dir=tmp_path / "out",
    ).result  # fmt: skip
    assert (
        result["metrics"]["training"]["steps"] == 1 and len(result["metrics"]["per_class_iou"]) == num_classes
    )
    assert math.isfinite(result["metrics"]["miou"]) and result["dataset"]["name"] == name
    assert result["settings"]["iterations"] == 1 and (tmp_path / "out" / "finetune_predictions.png").is_file()
