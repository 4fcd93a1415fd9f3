"""Tiny DINO-style pretraining: the loss is DINO's cross-view cross-entropy, runs are reproducible, the asset loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neco.backbones import create
from neco.demo.dino import DinoHead, DinoLoss, TinyDinoConfig, pretrain_tiny_dino


def test_loss_is_the_mean_cross_entropy_over_pairs_of_different_views():
    torch.manual_seed(0)
    teacher = [torch.randn(5, 7) for _ in range(2)]
    student = [torch.randn(5, 7) for _ in range(4)]
    loss_fn = DinoLoss(out_dim=7, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, 7))
    center = loss_fn.center.clone()
    terms = []
    for i in range(2):
        p = torch.softmax((teacher[i] - center) / 0.04, dim=-1)
        for j in range(4):
            if i != j:
                terms.append(-(p * torch.log_softmax(student[j] / 0.1, dim=-1)).sum(-1).mean())
    assert len(terms) == 6
    assert torch.allclose(loss_fn(student, teacher, teacher_temp=0.04), torch.stack(terms).mean(), atol=1e-6)
    # The centre moves toward the teacher batch mean by (1 - momentum).
    expected = 0.9 * center + 0.1 * torch.cat(teacher).mean(0, keepdim=True)
    assert torch.allclose(loss_fn.center, expected, atol=1e-6)


def test_loss_gradient_reaches_the_student_only():
    teacher = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    student = [torch.randn(3, 4, requires_grad=True) for _ in range(3)]
    DinoLoss(out_dim=4)(student, teacher, teacher_temp=0.04).backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


def test_head_prototypes_have_unit_norm_and_fixed_scale():
    head = DinoHead(16, out_dim=10, hidden_dim=8, bottleneck_dim=4)
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(10), atol=1e-6)
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    # Logits are cosines between the normalised bottleneck and unit prototypes.
    assert head(torch.randn(6, 16)).abs().max() <= 1.0 + 1e-5


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="global_size"):
        TinyDinoConfig(global_size=20)
    with pytest.raises(ValueError, match="teacher_temp"):
        TinyDinoConfig(teacher_temp=0.0)
    with pytest.raises(ValueError, match="ema_start"):
        TinyDinoConfig(ema_start=1.5)


def _tiny(steps: int = 3) -> TinyDinoConfig:
    return TinyDinoConfig(
        num_scenes=6, steps=steps, batch_size=2, scene_size=48, global_size=32, local_size=16,
        num_local=2, out_dim=32, warmup_steps=1, freeze_last_layer_steps=1,
    )  # fmt: skip


def test_runs_are_reproducible_and_the_asset_loads(tmp_path):
    torch.set_num_threads(1)
    model_a, log_a = pretrain_tiny_dino(_tiny(), tmp_path / "a.pth", progress=False)
    model_b, log_b = pretrain_tiny_dino(_tiny(), None, progress=False)
    assert log_a["loss_curve"] == log_b["loss_curve"] and len(log_a["loss_curve"]) == 3
    assert all(
        torch.equal(p, q) for p, q in zip(model_a.state_dict().values(), model_b.state_dict().values())
    )
    assert np.isfinite(log_a["final_loss"]) and log_a["config"]["method"] == "dino"
    loaded = create("vit_tiny", weights=tmp_path / "a.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert F.cosine_similarity(model_a(x), loaded(x)).item() > 0.999  # fp16 asset
    payload = torch.load(tmp_path / "a.pth", weights_only=True)
    assert payload["provenance"]["config"]["method"] == "dino"


def test_the_teacher_is_what_gets_saved_and_it_moved():
    torch.manual_seed(0)  # the run seeds torch with cfg.seed = 0 before creating the backbone
    start = create("vit_tiny").state_dict()
    model, _ = pretrain_tiny_dino(_tiny(steps=2), None, progress=False)
    moved = [not torch.equal(start[k], v) for k, v in model.state_dict().items() if v.is_floating_point()]
    assert any(moved)
    assert not any(p.requires_grad for p in model.parameters())  # the EMA teacher is frozen


def test_cli_refuses_pool_with_dino(tmp_path, capsys):
    from neco.cli import main

    with pytest.raises(SystemExit, match="--pool applies to --method multilabel only"):
        main(["pretrain-tiny", "--method", "dino", "--pool", "cls", "-o", str(tmp_path / "x.pth")])
    assert not (tmp_path / "x.pth").exists()
