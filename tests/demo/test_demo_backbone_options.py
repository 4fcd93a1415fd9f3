"""`neco demo` loads its starting backbone like every command: a checkpoint as --backbone, --which."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neco.backbones import create
from neco.backbones.loading import state_dict_checksum
from neco.cli import main
from neco.demo import run as demo_run


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[Path, dict, dict]:
    torch.manual_seed(0)
    teacher = {k: torch.randn_like(v) for k, v in create("vit_tiny").state_dict().items()}
    student = {k: torch.randn_like(v) for k, v in teacher.items()}
    path = tmp_path / "neco.ckpt"
    ckpt = {"format": "neco-checkpoint", "version": 1, "backbone": "vit_tiny", "num_register_tokens": 0}
    torch.save({**ckpt, "teacher": teacher, "student": student, "student_head": {}, "teacher_head": {}}, path)
    return path, teacher, student


def test_demo_takes_a_checkpoint_as_backbone_and_which(checkpoint, tmp_path: Path, monkeypatch) -> None:
    path, _, student = checkpoint
    seen = {}
    monkeypatch.setattr(demo_run, "run_demo", lambda cfg: seen.setdefault("cfg", cfg))
    assert main(["demo", "--backbone", str(path), "--which", "student", "--out", str(tmp_path / "d")]) == 0
    cfg = seen["cfg"]
    assert (cfg.backbone, cfg.weights, cfg.which) == ("vit_tiny", str(path), "student")
    model, start = demo_run.start_model(cfg, tmp_path)
    # the student is both evaluated and post-trained (training itself reads a checkpoint's teacher)
    assert state_dict_checksum(model) == state_dict_checksum(student)
    assert state_dict_checksum(create("vit_tiny", weights=start)) == state_dict_checksum(student)
    assert main(["demo", "--backbone", str(path), "--random-init", "--out", str(tmp_path / "d")]) == 2
