"""AdamW parameter groups and trainable_blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neco.method.head import ProjectionHead
from neco.method.optim import apply_trainable_blocks, build_param_groups


class _TinyViT(nn.Module):
    """Just the parameter names and shapes of a DINOv2 ViT that matter here."""

    def __init__(self, depth: int = 3, dim: int = 8) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, 2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.patch_embed = nn.Conv2d(3, dim, 2, 2)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm1": nn.LayerNorm(dim), "mlp": nn.Linear(dim, dim), "ls": nn.Module()})
            for _ in range(depth)
        )
        for block in self.blocks:
            block["ls"].gamma = nn.Parameter(torch.ones(dim))
        self.norm = nn.LayerNorm(dim)


def test_param_groups_cover_every_parameter_once() -> None:
    backbone, head = _TinyViT(), ProjectionHead(8, 16, 4)
    groups = build_param_groups(backbone, head, lr_backbone=1e-5, lr_head=1e-4, weight_decay=0.04)
    assert [g["name"] for g in groups] == [
        "backbone_decay",
        "backbone_no_decay",
        "head_decay",
        "head_no_decay",
    ]
    assert [g["apply_wd"] for g in groups] == [True, False, True, False]
    assert [g["weight_decay"] for g in groups] == [0.04, 0.0, 0.04, 0.0]
    assert [g["lr"] for g in groups] == [1e-5, 1e-5, 1e-4, 1e-4]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in backbone.parameters()} | {id(p) for p in head.parameters()}
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    for name in (
        "cls_token",
        "register_tokens",
        "mask_token",
        "pos_embed",
        "patch_embed.bias",
        "norm.weight",
        "blocks.0.ls.gamma",
    ):
        assert id(backbone.get_parameter(name)) in no_decay, name
    for name in ("patch_embed.weight", "blocks.1.mlp.weight"):
        assert id(backbone.get_parameter(name)) in decay, name
    assert {id(p) for p in groups[2]["params"]} == {
        id(m.weight) for m in head.mlp if isinstance(m, nn.Linear)
    }
    torch.optim.AdamW(groups)  # the groups are accepted as they are


def test_trainable_blocks_freezes_the_right_parameters() -> None:
    backbone = _TinyViT(depth=4)

    def trainable() -> set[str]:
        return {n for n, p in backbone.named_parameters() if p.requires_grad}

    apply_trainable_blocks(backbone, 2)
    assert trainable() == {
        n for n, _ in backbone.named_parameters() if n.startswith(("blocks.2.", "blocks.3."))
    }
    apply_trainable_blocks(backbone, -1)
    assert trainable() == {n for n, _ in backbone.named_parameters() if n.startswith("blocks.3.")}
    apply_trainable_blocks(backbone, [0, 2])
    assert trainable() == {
        n for n, _ in backbone.named_parameters() if n.startswith(("blocks.0.", "blocks.2."))
    }
    backbone.requires_grad_(True)
    backbone.mask_token.requires_grad_(False)
    apply_trainable_blocks(
        backbone, None
    )  # None keeps everything as it is: trainable, except what was frozen
    assert trainable() == {n for n, _ in backbone.named_parameters()} - {"mask_token"}
    apply_trainable_blocks(backbone, [1])
    groups = build_param_groups(backbone, ProjectionHead(8, 16, 4), 1e-5, 1e-4, 0.04)
    assert {id(p) for g in groups[:2] for p in g["params"]} == {
        id(p) for n, p in backbone.named_parameters() if n.startswith("blocks.1.")
    }
    with pytest.raises(ValueError, match="trainable_blocks"):
        apply_trainable_blocks(backbone, [7])
    with pytest.raises(ValueError, match="trainable_blocks"):
        apply_trainable_blocks(nn.Linear(2, 2), 1)


def test_decay_tokens_follows_the_public_rule() -> None:
    """`decay_tokens=True`: only biases and 1-D tensors are exempt; tokens of rank >= 2 are decayed."""
    backbone, head = _TinyViT(), ProjectionHead(8, 16, 4)
    groups = build_param_groups(backbone, head, 1e-5, 1e-4, 0.04, decay_tokens=True)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    for name in ("cls_token", "register_tokens", "mask_token", "pos_embed", "patch_embed.weight"):
        assert id(backbone.get_parameter(name)) in decay, name
    for name in ("patch_embed.bias", "norm.weight", "blocks.0.ls.gamma"):
        assert id(backbone.get_parameter(name)) in no_decay, name


def test_teacher_head_init_copy_or_independent() -> None:
    from neco.training.config import config_from_dict
    from neco.training.module import NeCoModule

    def module(init: str) -> NeCoModule:
        config = config_from_dict(
            {
                "model": {
                    "backbone": "vit_tiny",
                    "pretrained": False,
                    "head_hidden_dim": 16,
                    "head_out_dim": 8,
                    "teacher_head_init": init,
                }
            }
        )
        return NeCoModule(config)

    copied, independent = module("copy"), module("independent")
    same = [
        torch.equal(a, b) for a, b in zip(copied.teacher_head.parameters(), copied.student_head.parameters())
    ]
    assert all(same)
    weights = zip(independent.teacher_head.parameters(), independent.student_head.parameters())
    assert not any(torch.equal(a, b) for a, b in weights if a.ndim > 1)
    assert not any(p.requires_grad for p in independent.teacher_head.parameters())
    with pytest.raises(ValueError, match="model.teacher_head_init"):
        module("shared")


def test_resume_of_a_checkpoint_without_the_new_keys(tmp_path) -> None:
    """Checkpoints written before `teacher_head_init` / `decay_tokens` existed resume unchanged."""
    from neco.training.config import config_from_dict, config_to_dict
    from neco.training.resume import ConfigChangeError, check_config_change

    stored = config_to_dict(config_from_dict(None))
    del stored["model"]["teacher_head_init"], stored["optim"]["decay_tokens"]
    assert check_config_change(stored, config_from_dict(None), tmp_path / "a.ckpt") == {}
    for override in ({"model": {"teacher_head_init": "independent"}}, {"optim": {"decay_tokens": True}}):
        with pytest.raises(ConfigChangeError, match=next(iter(next(iter(override.values()))))):
            check_config_change(stored, config_from_dict(override), tmp_path / "a.ckpt")
