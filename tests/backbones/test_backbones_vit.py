"""The neco ViT: shapes, token layout, official position-embedding interpolation, every registered name."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from neco.backbones import create, get_config, list_backbones
from neco.backbones.pos_embed import interpolate_pos_embed
from neco.backbones.vit import SwiGLUFFN, VisionTransformer


@pytest.fixture(scope="module")
def tiny_reg() -> VisionTransformer:
    torch.manual_seed(0)
    return create("vit_tiny_reg").eval()


@pytest.mark.parametrize("name", list_backbones())
def test_every_registered_backbone_builds_and_runs(name: str) -> None:
    config = get_config(name)
    # One block keeps even ViT-g small; everything else is the registered architecture.
    model = create(name, depth=1).eval()
    p = config.patch_size
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 2 * p, 3 * p))
    assert out["x_norm_clstoken"].shape == (1, config.embed_dim)
    assert out["x_norm_regtokens"].shape == (1, config.num_register_tokens, config.embed_dim)
    assert out["x_norm_patchtokens"].shape == (1, 6, config.embed_dim)
    assert out["x_prenorm"].shape == (1, 1 + config.num_register_tokens + 6, config.embed_dim)
    assert torch.isfinite(out["x_prenorm"]).all()
    if config.built_by_timm:  # DINOv3: timm's Eva with RoPE (no position table), no mask token
        assert getattr(model.model, "pos_embed", None) is None and model.mask_token is None
        assert model.model.blocks[0].gamma_1 is not None  # LayerScale
        return
    assert model.pos_embed.shape == (1, 1 + config.pos_grid**2, config.embed_dim)
    assert (model.mask_token is not None) == (config.family == "dinov2")
    assert hasattr(model.blocks[0].ls1, "gamma") == (config.family == "dinov2")


def test_contract_attributes(tiny_reg: VisionTransformer) -> None:
    assert (tiny_reg.patch_size, tiny_reg.embed_dim, tiny_reg.num_heads, tiny_reg.num_register_tokens) == (
        8,
        192,
        3,
        4,
    )
    assert len(tiny_reg.blocks) == 4
    assert tiny_reg.config.name == "vit_tiny_reg"
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny_reg.config.patch_size = 16  # type: ignore[misc]


def test_unknown_name_and_override_are_refused() -> None:
    with pytest.raises(ValueError, match="dinov2_vits14_reg"):
        create("dinov2_vits15")
    with pytest.raises(ValueError, match="drop_path_rate"):
        create("vit_tiny", dropout=0.1)


def test_drop_path_rate_grows_linearly_and_eval_is_deterministic() -> None:
    model = create("vit_tiny", drop_path_rate=0.3)
    probs = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    assert probs == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_forward_is_cls_and_intermediate_layers_match(tiny_reg: VisionTransformer) -> None:
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        out = tiny_reg.forward_features(x)
        cls = tiny_reg(x)
        layers = tiny_reg.get_intermediate_layers(x, n=2, reshape=True, return_class_token=True)
        raw = tiny_reg.get_intermediate_layers(x, n=[3], norm=False)
    torch.testing.assert_close(cls, out["x_norm_clstoken"])
    assert len(layers) == 2
    last_grid, last_cls = layers[-1]
    assert last_grid.shape == (2, 192, 5, 7)
    # reshape: row-major patch order, channels first.
    torch.testing.assert_close(last_grid.flatten(2).transpose(1, 2), out["x_norm_patchtokens"])
    torch.testing.assert_close(last_cls, out["x_norm_clstoken"])
    torch.testing.assert_close(raw[0], out["x_prenorm"][:, 5:])
    with pytest.raises(ValueError, match="`n`"):
        tiny_reg.get_intermediate_layers(x, n=[7])


def test_registers_come_after_position_embedding(tiny_reg: VisionTransformer) -> None:
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        tokens = tiny_reg.prepare_tokens(x)
        pos = tiny_reg.interpolate_pos_encoding(24, 24)
    # Registers carry no position embedding; CLS and patches do.
    torch.testing.assert_close(tokens[:, 1:5], tiny_reg.register_tokens)
    torch.testing.assert_close(tokens[:, 0], tiny_reg.cls_token[:, 0] + pos[:, 0])
    assert tokens.shape == (1, 1 + 4 + 9, 192)


def test_non_multiple_input_drops_the_remainder(tiny_reg: VisionTransformer) -> None:
    x = torch.randn(1, 3, 70, 45)
    with torch.no_grad():
        full = tiny_reg.forward_features(x)["x_norm_patchtokens"]
        cropped = tiny_reg.forward_features(x[:, :, :64, :40].contiguous())["x_norm_patchtokens"]
    assert full.shape == (1, 8 * 5, 192)
    torch.testing.assert_close(full, cropped)


def test_last_self_attention_is_the_attention_of_the_last_block(tiny_reg: VisionTransformer) -> None:
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        attn = tiny_reg.get_last_self_attention(x)
        tokens = tiny_reg.prepare_tokens(x)
        for block in tiny_reg.blocks[:-1]:
            tokens = block(tokens)
        last = tiny_reg.blocks[-1].attn
        normed = tiny_reg.blocks[-1].norm1(tokens)
        _, _, v = last._qkv(normed)
        by_probs = last.proj((attn @ v).transpose(1, 2).reshape(2, tokens.shape[1], 192))
        fused = last(normed)
    assert attn.shape == (2, 3, 1 + 4 + 12, 1 + 4 + 12)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 17))
    torch.testing.assert_close(by_probs, fused, atol=1e-5, rtol=1e-4)


def test_interpolation_without_registers_follows_the_official_formula() -> None:
    torch.manual_seed(0)
    side, dim, p = 6, 5, 14
    pos = torch.randn(1, 1 + side * side, dim)
    height, width = 4 * p + 3, 9 * p  # grid 4 x 9
    out = interpolate_pos_embed(pos, height, width, p, offset=0.1, antialias=False)
    grid = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    expected = F.interpolate(
        grid, scale_factor=((4 + 0.1) / side, (9 + 0.1) / side), mode="bicubic", antialias=False
    )
    assert out.shape == (1, 1 + 36, dim)
    torch.testing.assert_close(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 36, dim), rtol=0, atol=0)
    torch.testing.assert_close(out[:, :1], pos[:, :1], rtol=0, atol=0)
    # The +0.1 scale factor is not "resize to the grid": timm's resampling gives other values.
    timm_style = resample_abs_pos_embed(pos, new_size=(4, 9), num_prefix_tokens=1, antialias=True)
    assert not torch.allclose(out, timm_style, atol=1e-4)


def test_interpolation_with_registers_resizes_to_the_grid_with_antialias() -> None:
    torch.manual_seed(1)
    side, dim, p = 6, 5, 14
    pos = torch.randn(1, 1 + side * side, dim)
    out = interpolate_pos_embed(pos, 3 * p, 5 * p, p, offset=0.0, antialias=True)
    grid = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(3, 5), mode="bicubic", antialias=True)
    torch.testing.assert_close(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 15, dim), rtol=0, atol=0)


def test_interpolation_is_skipped_only_for_square_inputs_on_the_pretrained_grid() -> None:
    pos = torch.randn(1, 1 + 16, 3)
    assert interpolate_pos_embed(pos, 4 * 14, 4 * 14, 14) is pos
    # Official quirk: same grid but a non-square pixel size (56 x 60) still goes through bicubic.
    assert interpolate_pos_embed(pos, 56, 60, 14) is not pos


def test_model_uses_its_configured_interpolation() -> None:
    plain, reg = create("vit_tiny"), create("vit_tiny_reg")
    assert (plain.interpolate_offset, plain.interpolate_antialias) == (0.1, False)
    assert (reg.interpolate_offset, reg.interpolate_antialias) == (0.0, True)
    for name in ("dinov2_vits14", "dino_vits16"):
        assert (get_config(name).interpolate_offset, get_config(name).interpolate_antialias) == (0.1, False)
    assert (
        get_config("dinov2_vitb14_reg").interpolate_offset,
        get_config("dinov2_vitb14_reg").interpolate_antialias,
    ) == (
        0.0,
        True,
    )
    pos = plain.pos_embed.detach()
    expected = interpolate_pos_embed(pos, 40, 72, 8, offset=0.1, antialias=False)
    torch.testing.assert_close(plain.interpolate_pos_encoding(40, 72), expected, rtol=0, atol=0)


def test_swiglu_hidden_size_matches_the_official_rounding() -> None:
    ffn = SwiGLUFFN(1536, 1536 * 4)
    assert ffn.w12.weight.shape == (2 * 4096, 1536)  # ViT-g: 4096 hidden units
    assert ffn.w3.weight.shape == (1536, 4096)
    x = torch.randn(2, 3, 1536)
    x1, x2 = ffn.w12(x).chunk(2, dim=-1)
    torch.testing.assert_close(ffn(x), ffn.w3(F.silu(x1) * x2))


def test_masks_replace_patch_tokens_with_the_mask_token() -> None:
    model = create("vit_tiny").eval()
    x = torch.randn(1, 3, 16, 16)
    masks = torch.tensor([[True, False, False, True]])
    with torch.no_grad():
        model.mask_token.fill_(3.0)
        tokens = model.prepare_tokens(x, masks)
        pos = model.interpolate_pos_encoding(16, 16)
    torch.testing.assert_close(tokens[0, 1], 3.0 + pos[0, 1])
    assert not torch.allclose(tokens[0, 2], 3.0 + pos[0, 2])
