"""The strict weights loader: containers, teacher/student choice, tolerated and refused keys."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from official_dinov2 import official_state_dict

from neco.backbones import convert, create, load_weights, read_state_dict
from neco.backbones.checkpoint import read_checkpoint
from neco.backbones.loading import canonical_tensors

# DINO v1 models shrunk to tiny width; the other names used here are tiny already.
SMALL = {"dino_vits16": {"embed_dim": 48, "num_heads": 3}}


def _state(name: str = "vit_tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {
        k: torch.randn_like(v) for k, v in official_state_dict(name, depth=2, **SMALL.get(name, {})).items()
    }


def _loaded(state_or_path, name: str = "vit_tiny", **kwargs) -> dict[str, torch.Tensor]:
    model = create(name, depth=2, **SMALL.get(name, {}))
    load_weights(model, state_or_path, **kwargs)
    return canonical_tensors(model)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """`a` (a loaded model's canonical tensors) holds the network of the official state dict `b`."""
    b = canonical_tensors(b)
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _head(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {"projection_head.0.weight": torch.randn(8, 192), "projection_head.0.bias": torch.randn(8)}


def test_neco_checkpoint_file_gives_teacher_by_default(tmp_path: Path) -> None:
    teacher, student = _state(seed=1), _state(seed=2)
    ckpt = {
        "format": "neco-checkpoint",
        "version": 1,
        "backbone": "vit_tiny",
        "num_register_tokens": 0,
        "student": student,
        "teacher": teacher,
        "student_head": {"0.weight": torch.zeros(2)},
        "teacher_head": {"0.weight": torch.zeros(2)},
        "optimizer": {"state": {}, "param_groups": []},
        "step": 3,
        "epoch": 0,
        "config": {"lr": 1e-5},
        # Lightning state that the loader must ignore.
        "state_dict": {"model.blocks.0.norm1.weight": torch.zeros(192)},
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    _assert_same(_loaded(path), teacher)
    _assert_same(_loaded(path, which="student"), student)
    _, info = read_state_dict(path)
    assert (info.container, info.which, info.backbone) == ("neco checkpoint", "teacher", "vit_tiny")


def test_neco_lightning_checkpoint_with_heads() -> None:
    teacher, student = _state(seed=3), _state(seed=4)
    state_dict = {f"model.{k}": v for k, v in (student | _head(5)).items()}
    state_dict |= {f"teacher.{k}": v for k, v in (teacher | _head(6)).items()}
    state_dict["criterion.queue"] = torch.zeros(4, 8)
    ckpt = {"state_dict": state_dict, "epoch": 1, "global_step": 10}
    _assert_same(_loaded(ckpt), teacher)
    _assert_same(_loaded(ckpt, which="student"), student)
    _, info = read_state_dict(ckpt)
    assert info.dropped_head_keys == ["projection_head.0.bias", "projection_head.0.weight"]


def test_dino_v1_training_checkpoint() -> None:
    teacher, student = _state("dino_vits16", 7), _state("dino_vits16", 8)
    ckpt = {
        "teacher": {f"backbone.{k}": v for k, v in teacher.items()}
        | {"head.mlp.0.weight": torch.zeros(3, 3)},
        "student": {f"module.backbone.{k}": v for k, v in student.items()}
        | {"module.head.last_layer.weight": torch.zeros(3)},
        "epoch": 100,
        "args": None,
    }
    _assert_same(_loaded(ckpt, "dino_vits16"), teacher)
    _assert_same(_loaded(ckpt, "dino_vits16", which="student"), student)


def test_official_file_without_mask_token_and_timm_and_hf_dicts_load() -> None:
    official = _state("vit_tiny_reg", 9)
    without_mask = {k: v for k, v in official.items() if k != "mask_token"}
    _assert_same(_loaded(without_mask, "vit_tiny_reg"), official)
    # timm and HF dicts of the same weights give the same model (timm folds the CLS position row).
    _assert_same(_loaded(convert(official, to="hf"), "vit_tiny_reg"), official)
    _assert_same(_loaded(convert(official, to="timm"), "vit_tiny_reg"), official)


def test_dropped_layerscale_key_is_refused_by_name() -> None:
    state = _state()
    del state["blocks.1.ls2.gamma"]
    with pytest.raises(ValueError, match=r"missing keys \[blocks\.1\.ls2\.gamma\]") as err:
        _loaded(state)
    assert "guessed: state dict, official keys" in str(err.value)


def test_unexpected_and_misshaped_keys_are_refused() -> None:
    state = _state()
    state["blocks.0.attn.q_norm.weight"] = torch.zeros(64)
    with pytest.raises(ValueError, match=r"unexpected keys \[blocks\.0\.attn\.q_norm\.weight\]"):
        _loaded(state)
    with pytest.raises(ValueError, match="4 register tokens .`register_tokens`. but the model has 0"):
        _loaded(_state("vit_tiny_reg"), "vit_tiny")  # register weights into a plain model
    with pytest.raises(ValueError, match="shape mismatches"):
        load_weights(create("vit_tiny", depth=2, embed_dim=96), _state("vit_tiny"))


def test_pretrained_grid_of_the_checkpoint_is_adopted() -> None:
    state = _state()
    state["pos_embed"] = torch.randn(1, 1 + 16 * 16, 192)
    model = create("vit_tiny", depth=2)
    load_weights(model, state)
    assert torch.equal(canonical_tensors(model)["pos_embed"], state["pos_embed"])
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 48)).shape == (1, 192)


def test_xr_register_weights_in_a_register_free_model() -> None:
    state = _state("vit_tiny_reg")
    model = create("vit_tiny_reg", depth=2, num_register_tokens=0)
    info = load_weights(model, state)
    assert (
        model.num_register_tokens == 0
        and model.forward_features(torch.randn(1, 3, 16, 16))["x_norm_regtokens"].shape[1] == 0
    )
    assert any("register" in note for note in info.notes)
    assert torch.equal(model.blocks[1].ls1.gamma, state["blocks.1.ls1.gamma"])


def test_read_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")
    path = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(lr=1.0)}, path)  # like DINO training checkpoints
    with pytest.raises(ValueError, match="weights_only=True"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match="`which` must be one of"):
        read_state_dict(_state(), which="ema")
