"""`neco eval openvocab` prompts the 171 class names of COCO-Stuff-164k, read from its real layout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_data_coco import make_coco

from neco.cli import main
from neco.data.captions import write_scene_captions
from neco.data.coco_labels import COCO_STUFF_164K_CLASSES
from neco.data.synthetic import write_scenes
from neco.evaluation.schema import validate_result


def test_openvocab_prompts_all_171_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run_text_align: Callable[..., int]
) -> None:
    scenes = write_scenes(tmp_path / "scenes", num_train=4, num_val=1, size=32, progress=False)
    captions = write_scene_captions(scenes, tmp_path / "captions", "coco")
    threads = torch.get_num_threads()
    rc = run_text_align(captions, tmp_path / "run", "--max-steps", "1")
    assert rc == 0, capsys.readouterr().err[-3000:]
    out = tmp_path / "eval"
    rc = main(
        [
            "eval",
            "openvocab",
            "--dataset",
            "coco-stuff-164k",
            "--data-root",
            str(make_coco(tmp_path / "coco")),
        ]
        + ["--mapping", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--backbone", "vit_tiny_scenes"]
        + ["--input-size", "32", "--num-workers", "0", "--no-progress", "--num-figures", "1"]
        + ["--threads", "1", "--out", str(out)]
    )
    torch.set_num_threads(threads)
    assert rc == 0, capsys.readouterr().err[-3000:]
    result = json.loads((out / "openvocab.json").read_text())
    validate_result(result)
    # no background class in COCO-Stuff: auto prompts every one of the 171 names, in train-id order
    assert result["settings"]["background"] == "none" and result["settings"]["num_prompted_classes"] == 171
    assert tuple(result["metrics"]["per_class_iou"]) == COCO_STUFF_164K_CLASSES
