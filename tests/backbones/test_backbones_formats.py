"""Format detection and exact conversion between official DINOv2, timm and Hugging Face key names."""

from __future__ import annotations

import pytest
import torch
from official_dinov2 import official_state_dict

from neco.backbones import convert, detect_format
from neco.backbones.formats import strip_prefixes


def _random_state(name: str, **overrides) -> dict[str, torch.Tensor]:
    """A neco model's state dict with every tensor random (so a wrong mapping cannot go unnoticed)."""
    torch.manual_seed(0)
    state = official_state_dict(name, depth=2, **overrides)
    return {k: torch.randn_like(v) for k, v in state.items()}


MODELS = {
    "dinov2": ("vit_tiny", {}),
    "dinov2_reg": ("vit_tiny_reg", {}),
    "dinov2_swiglu": ("vit_tiny", {"ffn": "swiglu"}),
    "dino_v1": ("dino_vits16", {"embed_dim": 48, "num_heads": 3}),
}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_official_hf_round_trip_is_exact(kind: str) -> None:
    name, overrides = MODELS[kind]
    official = _random_state(name, **overrides)
    assert detect_format(official) == "official"
    hf = convert(official, to="hf")
    assert detect_format(hf) == "hf"
    assert not any(k.startswith("blocks.") for k in hf)
    _assert_same(convert(hf, to="official"), official)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_timm_round_trip_is_exact(kind: str) -> None:
    name, overrides = MODELS[kind]
    official = _random_state(name, **overrides)
    timm_state = convert(official, to="timm")
    assert "mask_token" not in timm_state
    _assert_same(convert(convert(timm_state, to="official"), to="timm"), timm_state)
    _assert_same(convert(convert(timm_state, to="hf"), to="timm"), timm_state)
    back = convert(timm_state, to="official")
    # official -> timm -> official: identical except the mask token (timm has none) and, with
    # registers, the CLS position row folded into the CLS token (same sum, so the same model).
    for key, value in official.items():
        if key == "mask_token":
            assert key not in back
        elif "register_tokens" in official and key == "cls_token":
            assert torch.equal(back[key], value + official["pos_embed"][:, :1])
        elif "register_tokens" in official and key == "pos_embed":
            assert torch.equal(back[key][:, 1:], value[:, 1:])
            assert torch.count_nonzero(back[key][:, 0]) == 0
        else:
            assert torch.equal(back[key], value), key


def test_timm_register_layout() -> None:
    official = _random_state("vit_tiny_reg")
    timm_state = convert(official, to="timm")
    assert timm_state["reg_token"].shape == (1, 4, 192)
    assert timm_state["pos_embed"].shape == (1, 28 * 28, 192)  # no CLS row
    assert detect_format(timm_state) == "timm"


def test_swiglu_names() -> None:
    official = _random_state("vit_tiny", ffn="swiglu")
    timm_state, hf = convert(official, to="timm"), convert(official, to="hf")
    assert torch.equal(timm_state["blocks.1.mlp.fc1.weight"], official["blocks.1.mlp.w12.weight"])
    assert torch.equal(hf["encoder.layer.1.mlp.weights_in.weight"], official["blocks.1.mlp.w12.weight"])
    assert torch.equal(hf["encoder.layer.1.mlp.weights_out.bias"], official["blocks.1.mlp.w3.bias"])


def test_hf_dinov2_names_and_qkv_split() -> None:
    official = _random_state("vit_tiny_reg")
    hf = convert(official, to="hf")
    qkv = official["blocks.1.attn.qkv.weight"]
    assert torch.equal(hf["encoder.layer.1.attention.attention.query.weight"], qkv[:192])
    assert torch.equal(hf["encoder.layer.1.attention.attention.key.weight"], qkv[192:384])
    assert torch.equal(hf["encoder.layer.1.attention.attention.value.weight"], qkv[384:])
    assert torch.equal(hf["encoder.layer.0.layer_scale1.lambda1"], official["blocks.0.ls1.gamma"])
    assert torch.equal(hf["embeddings.position_embeddings"], official["pos_embed"])  # includes the CLS row
    assert torch.equal(hf["embeddings.register_tokens"], official["register_tokens"])
    assert torch.equal(hf["layernorm.weight"], official["norm.weight"])


def test_transformers5_in_memory_names_are_accepted() -> None:
    official = _random_state("vit_tiny")
    renames = {
        "attention.attention.query.": "attention.q_proj.",
        "attention.attention.key.": "attention.k_proj.",
        "attention.attention.value.": "attention.v_proj.",
        "attention.output.dense.": "attention.o_proj.",
    }
    v5 = {}
    for key, value in convert(official, to="hf").items():
        for old, new in renames.items():
            key = key.replace(old, new)
        v5[key] = value
    assert any(".q_proj." in k for k in v5)
    _assert_same(convert(v5, to="official"), official)


def test_hf_vit_names_for_dino_v1() -> None:
    official = _random_state("dino_vits16", embed_dim=48, num_heads=3)
    hf = convert(official, to="hf")
    assert torch.equal(hf["encoder.layer.0.layernorm_before.weight"], official["blocks.0.norm1.weight"])
    assert torch.equal(hf["encoder.layer.0.intermediate.dense.weight"], official["blocks.0.mlp.fc1.weight"])
    assert torch.equal(hf["encoder.layer.0.output.dense.bias"], official["blocks.0.mlp.fc2.bias"])


def test_prefixes_and_block_chunks_are_normalised() -> None:
    official = _random_state("vit_tiny")
    wrapped = {f"module._orig_mod.backbone.{k}": v for k, v in official.items()}
    assert sorted(strip_prefixes(wrapped)) == sorted(official)
    _assert_same(convert(wrapped, to="official"), official)
    # Official training checkpoints with block chunks: blocks.<chunk>.<global index>.*
    chunked = {
        (
            k.replace("blocks.0.", "blocks.0.0.").replace("blocks.1.", "blocks.1.1.")
            if k.startswith("blocks.")
            else k
        ): v
        for k, v in official.items()
    }
    _assert_same(convert(chunked, to="official"), official)


def test_bad_inputs_are_refused() -> None:
    official = _random_state("vit_tiny")
    with pytest.raises(ValueError, match="`to` must be one of"):
        convert(official, to="onnx")
    with pytest.raises(ValueError, match="head keys"):
        convert(official | {"head.weight": torch.zeros(3)}, to="timm")
    with pytest.raises(ValueError, match="not a ViT backbone"):
        detect_format({"conv1.weight": torch.zeros(1)})
    hf = convert(official, to="hf")
    del hf["encoder.layer.0.attention.attention.key.bias"]
    with pytest.raises(ValueError, match="key.bias"):
        convert(hf, to="official")
