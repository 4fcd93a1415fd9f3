"""A demo rerun into the same folder reuses only the parts whose settings did not change, and says so."""

from __future__ import annotations

import json

import pytest
import torch

from neco.demo import run as demo_run
from neco.demo.run import DemoConfig, run_demo


def _fake_evaluation(model, train_set, val_set, cfg, tag, protocols=demo_run.PROTOCOLS):
    """Evaluations are not what this test is about: constant scores, no examples (no figures)."""
    stats = {"miou_mean": 10.0, "miou_std": 0.0, "miou_per_seed": [10.0]}
    return {"scores": {p: stats for p in protocols}, "examples": {"hummingbird": None, "linear": None}}


def _steps_and_teacher(out):
    checkpoint = torch.load(
        out / "neco_run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    return checkpoint["step"], checkpoint["config"]["optim"]["lr_backbone"], checkpoint["teacher"]


@pytest.mark.slow
def test_rerun_with_other_settings_redoes_training(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_run, "evaluate_backbone", _fake_evaluation)
    out = tmp_path / "demo"
    small = dict(
        out=str(out), num_train=8, num_val=2, image_size=48, train_steps=2, batch_size=2, progress=False
    )
    first = run_demo(DemoConfig.quick(**small))
    assert first["parts"] == {"scenes": "new", "training": "new", "evaluations": "run"}
    step, lr, teacher = _steps_and_teacher(out)
    assert step == 2 and lr == pytest.approx(5e-5)

    same = run_demo(DemoConfig.quick(**small))  # identical settings: reused, no new steps
    assert same["parts"]["scenes"] == "reused" and same["parts"]["training"] == "reused"
    assert torch.equal(_steps_and_teacher(out)[2]["model.pos_embed"], teacher["model.pos_embed"])

    other = run_demo(DemoConfig.quick(**{**small, "train_steps": 3, "lr_backbone": 1e-4}))
    assert other["parts"]["scenes"] == "reused"
    assert other["parts"]["training"].startswith("redone (settings changed: lr_backbone, steps")
    step, lr, _ = _steps_and_teacher(out)
    assert step == 3 and lr == pytest.approx(1e-4) and other["training"]["steps"] == 3
    assert other["settings"]["lr_backbone"] == pytest.approx(1e-4)

    regenerated = run_demo(
        DemoConfig.quick(**{**small, "num_train": 10, "train_steps": 3, "lr_backbone": 1e-4})
    )
    assert regenerated["parts"]["scenes"].startswith("redone (settings changed: num_train")
    assert regenerated["parts"]["training"].startswith("redone (settings changed: scenes")
    ledger = json.loads((out / "parts.json").read_text())
    assert (
        set(ledger) == {"scenes", "training", "evaluations"}
        and ledger["scenes"]["settings"]["num_train"] == 10
    )
