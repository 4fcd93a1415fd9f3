"""DINOv3 through timm's Eva: patch grid, Meta / timm key names, strict loading, export, gated weights."""

from __future__ import annotations

import pytest
import timm
import torch

from neco.backbones import create, get_config
from neco.backbones.formats import meta_state_dict

# A 2-block DINOv3 ViT-S/16 keeps the tests fast; everything else is the registered architecture.
TINY = {"depth": 2}


def _randomize(model: torch.nn.Module) -> None:
    """Random values everywhere (LayerScale, tokens, biases), so that every tensor matters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)


def _meta_names(timm_state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The same weights in Meta's official DINOv3 names, written from Meta's layout (docs/WEIGHTS.md).

    Meta's files hold `storage_tokens`, `mask_token`, `rope_embed.periods`, per block `ls1.gamma`,
    `ls2.gamma` and a fused `attn.qkv.bias` (zeros in the distilled models) with its `bias_mask`.
    """
    out = {}
    dim = model.embed_dim
    for key, value in timm_state.items():
        key = (
            key.replace("reg_token", "storage_tokens")
            .replace("gamma_1", "ls1.gamma")
            .replace("gamma_2", "ls2.gamma")
        )
        out[key] = value.clone()
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = torch.arange(1.0, 1.0 + dim // model.blocks[0].attn.num_heads // 4)
    for index in range(len(model.blocks)):
        out[f"blocks.{index}.attn.qkv.bias"] = torch.zeros(3 * dim)
        out[f"blocks.{index}.attn.qkv.bias_mask"] = torch.ones(3 * dim)
    return out


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    model = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0, **TINY).eval()
    _randomize(model)
    return model


@pytest.mark.parametrize("size", [(224, 224), (160, 272)])
def test_patch_grid_equals_timm_forward_features(reference: torch.nn.Module, size: tuple[int, int]) -> None:
    model = create("dinov3_vits16", weights=reference.state_dict(), **TINY).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = reference.forward_features(x)  # (B, 5 + h*w, D), final norm applied
        out = model.forward_features(x)
    grid = (size[0] // 16) * (size[1] // 16)
    assert reference.num_prefix_tokens == 5 and model.num_register_tokens == 4
    assert out["x_norm_patchtokens"].shape == (2, grid, 384)
    torch.testing.assert_close(out["x_norm_patchtokens"], expected[:, 5:], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["x_norm_clstoken"], expected[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["x_norm_regtokens"], expected[:, 1:5], atol=1e-5, rtol=0)


def test_meta_and_timm_state_dicts_load_strictly_and_agree(reference: torch.nn.Module) -> None:
    timm_state = reference.state_dict()
    meta_state = _meta_names(timm_state, reference)
    assert "storage_tokens" in meta_state and "reg_token" not in meta_state
    from_timm = create("dinov3_vits16", weights=timm_state, **TINY).eval()
    from_meta = create("dinov3_vits16", weights={"model": meta_state}, **TINY).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a = from_timm.forward_features(x)["x_norm_patchtokens"]
        b = from_meta.forward_features(x)["x_norm_patchtokens"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for key, value in from_meta.model.state_dict().items():
        torch.testing.assert_close(value, timm_state[key], rtol=0, atol=0)


def test_renamed_key_is_refused_with_its_name(reference: torch.nn.Module) -> None:
    meta_state = _meta_names(reference.state_dict(), reference)
    meta_state["blocks.1.ls2.gama"] = meta_state.pop("blocks.1.ls2.gamma")
    with pytest.raises(ValueError, match=r"blocks\.1\.ls2\.gama") as err:
        create("dinov3_vits16", weights=meta_state, **TINY)
    assert "blocks.1.gamma_2" in str(err.value)  # the missing key, in the model's names
    timm_state = dict(reference.state_dict())
    timm_state["norm.wieght"] = timm_state.pop("norm.weight")
    with pytest.raises(ValueError, match=r"norm\.wieght"):
        create("dinov3_vits16", weights=timm_state, **TINY)


def test_nonzero_qkv_bias_is_refused_for_the_bias_free_model(reference: torch.nn.Module) -> None:
    meta_state = _meta_names(reference.state_dict(), reference)
    meta_state["blocks.0.attn.qkv.bias"] = torch.ones(3 * 384)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.bias holds non-zero"):
        create("dinov3_vits16", weights=meta_state, **TINY)


def test_meta_export_reloads_with_identical_outputs(reference: torch.nn.Module) -> None:
    model = create("dinov3_vits16", weights=reference.state_dict(), **TINY).eval()
    exported = meta_state_dict(model.model)
    assert {"storage_tokens", "rope_embed.periods", "blocks.0.ls1.gamma", "blocks.0.attn.qkv.bias"} <= set(
        exported
    )
    assert not any("reg_token" in k or "gamma_1" in k for k in exported)
    again = create("dinov3_vits16", weights=exported, **TINY).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_swiglu_meta_export_round_trip() -> None:
    # ViT-S+/16 has SwiGLU blocks: Meta's w1 / w2 / w3 <-> timm's fc1_g / fc1_x / fc2.
    model = create("dinov3_vits16plus", depth=1).eval()
    _randomize(model)
    exported = meta_state_dict(model.model)
    assert {"blocks.0.mlp.w1.weight", "blocks.0.mlp.w2.weight", "blocks.0.mlp.w3.weight"} <= set(exported)
    again = create("dinov3_vits16plus", weights=exported, depth=1).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_last_self_attention_matches_the_block_output(reference: torch.nn.Module) -> None:
    model = create("dinov3_vits16", weights=reference.state_dict(), **TINY).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        attn = model.get_last_self_attention(x)  # (1, heads, T, T)
    tokens = 1 + 4 + 4 * 6
    assert attn.shape == (1, 6, tokens, tokens)
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, 6, tokens))
    # Recompute the last block with the captured probabilities: it must give the model's own output.
    block = model.model.blocks[-1]
    captured = {}
    handle = block.register_forward_hook(lambda _m, inputs, out: captured.update(x=inputs[0], out=out))
    with torch.no_grad():
        model.forward_features(x)
    handle.remove()
    with torch.no_grad():
        h = block.norm1(captured["x"])
        v = (h @ block.attn.qkv.weight.T).reshape(1, tokens, 3, 6, 64)[:, :, 2].transpose(1, 2)
        mixed = (attn @ v).transpose(1, 2).reshape(1, tokens, 384)
        y = captured["x"] + block.gamma_1 * block.attn.proj(mixed)
        y = y + block.gamma_2 * block.mlp(block.norm2(y))
    torch.testing.assert_close(y, captured["out"], atol=1e-5, rtol=0)


def test_gated_weights_message_names_file_and_place(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NECO_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        create("dinov3_vits16", pretrained=True, depth=1)
    message = str(err.value)
    assert "dinov3_vits16_pretrain_lvd1689m" in message and str(tmp_path / "checkpoints") in message
    assert "--weights" in message and "license" in message
    # A file put there by hand is found (any release hash).
    reference = create("dinov3_vits16", depth=1)
    (tmp_path / "checkpoints").mkdir()
    torch.save(
        meta_state_dict(reference.model),
        tmp_path / "checkpoints" / "dinov3_vits16_pretrain_lvd1689m-abc123.pth",
    )
    get_config("dinov3_vits16")
    loaded = create("dinov3_vits16", pretrained=True, depth=1)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("pretrained", [True, False])
def test_export_names_meta_license_only_for_meta_weights(pretrained: bool, tmp_path, capsys) -> None:
    """A run that started from random weights holds nothing of Meta's: its export prints no license notice."""
    from neco.cli import main

    torch.manual_seed(0)
    state = create("dinov3_vits16", pretrained=False).state_dict()
    path = tmp_path / "run.ckpt"
    config = {"model": {"backbone": "dinov3_vits16", "pretrained": pretrained, "weights": None}}
    checkpoint = {"format": "neco-checkpoint", "version": 1, "backbone": "dinov3_vits16", "config": config}
    torch.save({**checkpoint, "student": state, "teacher": state, "step": 1}, path)
    assert main(["export", str(path), "--format", "timm", "-o", str(tmp_path / "out.safetensors")]) == 0
    assert ("DINOv3 license" in capsys.readouterr().out) is pretrained
