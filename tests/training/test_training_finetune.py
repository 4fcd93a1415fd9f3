"""`neco eval finetune` end to end on generated scenes: learning, freezing, exact resume, refusals, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import write_small_scenes

import neco.training.finetune  # noqa: F401  (registers the protocol's trainer)
from neco.backbones import create
from neco.backbones.loading import load_backbone
from neco.data import build_segmentation_dataset
from neco.evaluation import Features, evaluate
from neco.evaluation.protocol import EvalData
from neco.evaluation.protocols.finetune import FinetuneSettings
from neco.training.finetune import parameter_groups, poly_factor


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_scenes(tmp_path_factory.mktemp("scenes"))


def _data(scenes: Path) -> EvalData:
    train = build_segmentation_dataset("scenes", scenes, "train")
    val = build_segmentation_dataset("scenes", scenes, "val")
    return EvalData(val=val, train=train, name="scenes", root=str(scenes))


def _start() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("vit_tiny", pretrained=False)


def _run(out: Path, scenes: Path, model: torch.nn.Module | None = None, **options):
    values = {"decoder": "linear", "iterations": 4, "ckpt_every": 2, "drop_path": 0.0, **options}
    return evaluate(
        "finetune",
        Features.of_model(model or _start()),
        _data(scenes),
        FinetuneSettings(**values),
        input_size=32,
        batch_size=2,
        num_workers=0,
        progress=False,
        num_figures=0,
        out_dir=out,
    )


def _student(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["student"]


def test_loss_falls_backbone_changes_and_the_checkpoint_is_a_backbone(tmp_path: Path, scenes: Path) -> None:
    start = _start()
    before = {k: v.clone() for k, v in start.state_dict().items()}
    # whole-scene crops without photometric changes: 4 epochs of the same 8 images, so the loss must fall
    result = _run(
        tmp_path,
        scenes,
        start,
        iterations=16,
        lr=0.01,
        photometric=False,
        ratio_range=(1.5, 1.5),
        ckpt_every=16,
    ).result
    training = result["metrics"]["training"]
    curve = training["loss_curve"]
    assert sum(curve[-4:]) / 4 < sum(curve[:4]) / 4, curve
    assert training["steps"] == 16 and result["settings"]["iterations"] == 16
    assert 0.0 <= result["metrics"]["miou"] <= 100.0 and len(result["metrics"]["per_class_iou"]) == 9
    assert all(
        torch.equal(before[k], v) for k, v in start.state_dict().items()
    )  # the caller's model is untouched
    after = _student(tmp_path / "checkpoints" / "last.ckpt")
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    # `neco eval --backbone FILE` reads the fine-tuned backbone, with the checksum the result records
    model, identity = load_backbone(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert identity["name"] == "vit_tiny" and identity["sha256"] == training["finetuned_sha256"]
    assert identity["sha256"] != result["backbone"]["sha256"]
    assert json.loads((tmp_path / "finetune.json").read_text())["headline"]["name"] == "miou"


def test_all_blocks_frozen_keeps_the_backbone(tmp_path: Path, scenes: Path) -> None:
    start = _start()
    result = _run(tmp_path, scenes, start, freeze_blocks=99, iterations=2, lr=0.05).result
    after = _student(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.equal(v, after[k]) for k, v in start.state_dict().items())
    assert result["metrics"]["training"]["trainable_parameters"] == 192 * 9 + 9  # the linear decoder only


def test_resume_is_exact_and_mismatches_are_refused(tmp_path: Path, scenes: Path) -> None:
    options = {"decoder": "mask", "drop_path": 0.1, "decoder_layers": 1}
    full = _run(tmp_path / "full", scenes, **options).result
    # a run stopped at step 2: its folder holds only the step-2 checkpoint
    (tmp_path / "cut" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "checkpoints" / "step_00000002.ckpt", tmp_path / "cut" / "checkpoints")
    resumed = _run(tmp_path / "cut", scenes, resume="auto", **options).result
    assert resumed["metrics"]["training"]["resumed_from"].endswith("step_00000002.ckpt")
    a, b = (_student(p / "checkpoints" / "last.ckpt") for p in (tmp_path / "full", tmp_path / "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"]["training"]["loss_curve"] == full["metrics"]["training"]["loss_curve"]
    assert resumed["metrics"]["miou"] == full["metrics"]["miou"]
    with pytest.raises(FileExistsError, match="already holds checkpoints.*--resume auto"):
        _run(tmp_path / "full", scenes, **options)
    with pytest.raises(ValueError, match=r"other settings \(decoder: 'mask' -> 'linear'"):
        _run(tmp_path / "full", scenes, resume="auto", **{**options, "decoder": "linear"})


def test_parameter_groups_freeze_and_layer_decay() -> None:
    from neco.evaluation.blocks.segmenter import SegmenterModel, build_decoder

    model = SegmenterModel(_start(), build_decoder("linear", 192, 3))
    settings = FinetuneSettings(freeze_blocks=2, layer_decay=0.5, lr=1.0)
    groups = parameter_groups(model, settings)
    scale_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    backbone = model.backbone
    assert (
        not backbone.model.patch_embed.proj.weight.requires_grad
        and not backbone.blocks[1].norm1.weight.requires_grad
    )
    depth = len(backbone.blocks)
    assert scale_of[id(backbone.blocks[2].norm1.weight)] == 0.5 ** (depth + 1 - 3)
    assert scale_of[id(backbone.model.norm.weight)] == 1.0 and scale_of[id(model.decoder.head.weight)] == 1.0
    assert poly_factor(0, 100, 0.9, 0.01) == 1.0 and poly_factor(100, 100, 0.9, 0.01) == pytest.approx(0.01)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path, scenes: Path) -> None:
    """`neco eval finetune --devices 2` on CPU (gloo): one result from rank 0, trained by both ranks."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [
        sys.executable,
        "-m",
        "neco.cli",
        "eval",
        "finetune",
        "--dataset",
        "scenes",
        "--data-root",
        str(scenes),
    ]
    args += ["--backbone", "vit_tiny", "--random-init", "--decoder", "linear", "--iterations", "2"]
    args += [
        "--devices",
        "2",
        "--batch-size",
        "2",
        "--input-size",
        "32",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    args += ["--num-figures", "0", "--device", "cpu", "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "finetune.json").read_text())
    assert result["metrics"]["training"]["world_size"] == 2 and result["metrics"]["training"]["steps"] == 2
    assert (tmp_path / "ddp" / "checkpoints" / "step_00000002.ckpt").is_file()
