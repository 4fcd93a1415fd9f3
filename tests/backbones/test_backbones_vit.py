"""The ViT backbones (timm-built): shapes, token layout, the official DINOv2 interpolation, every registered name."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from official_dinov2 import interpolate_pos_encoding, official_patch_tokens, official_state_dict
from timm.layers import resample_abs_pos_embed

from neco.backbones import Backbone, create, get_config, list_backbones
from neco.backbones.model import official_pos_embed


@pytest.fixture(scope="module")
def tiny_reg() -> Backbone:
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
    if config.family == "dinov3":  # timm's Eva with RoPE (no position table)
        assert getattr(model.model, "pos_embed", None) is None
        assert model.model.blocks[0].gamma_1 is not None  # LayerScale
        return
    # timm's register layout: no CLS row in the table (the CLS token holds it)
    rows = config.pos_grid**2 + (0 if config.num_register_tokens else 1)
    assert model.model.pos_embed.shape == (1, rows, config.embed_dim)
    assert hasattr(model.blocks[0].ls1, "gamma") == (config.family == "dinov2")


def test_contract_attributes(tiny_reg: Backbone) -> None:
    assert (tiny_reg.patch_size, tiny_reg.embed_dim, tiny_reg.num_heads, tiny_reg.num_register_tokens) == (
        8,
        192,
        3,
        4,
    )
    assert len(tiny_reg.blocks) == 4 and tiny_reg.num_prefix_tokens == 5
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
    probs = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]
    assert probs == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_forward_is_cls_and_intermediate_layers_match(tiny_reg: Backbone) -> None:
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


def test_non_multiple_input_drops_the_remainder(tiny_reg: Backbone) -> None:
    x = torch.randn(1, 3, 70, 45)
    with torch.no_grad():
        full = tiny_reg.forward_features(x)["x_norm_patchtokens"]
        cropped = tiny_reg.forward_features(x[:, :, :64, :40].contiguous())["x_norm_patchtokens"]
    assert full.shape == (1, 8 * 5, 192)
    torch.testing.assert_close(full, cropped)


@pytest.mark.parametrize("name", ["vit_tiny", "vit_tiny_reg", "dino_vits16"])
@pytest.mark.parametrize("size", [(224, 224), (448, 448), (224, 336), (70, 45)])
def test_patch_tokens_match_the_official_dinov2_code(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    shrink = {"embed_dim": 48, "num_heads": 3}
    state = {k: torch.randn_like(v) * 0.1 for k, v in official_state_dict(name, depth=2, **shrink).items()}
    model = create(name, depth=2, weights=state, **shrink).eval()
    config = model.config
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model.forward_features(x)["x_norm_patchtokens"]
        expected = official_patch_tokens(
            state,
            x,
            patch=config.patch_size,
            heads=config.num_heads,
            offset=config.interpolate_offset,
            antialias=config.interpolate_antialias,
        )
    assert (
        out.shape
        == expected.shape
        == (1, (size[0] // config.patch_size) * (size[1] // config.patch_size), config.embed_dim)
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_last_self_attention_is_the_attention_of_the_last_block(tiny_reg: Backbone) -> None:
    x = torch.randn(2, 3, 32, 24)
    last = tiny_reg.blocks[-1].attn
    seen = {}
    handles = [
        tiny_reg.blocks[-1].norm1.register_forward_hook(lambda _m, _i, out: seen.setdefault("normed", out)),
        last.register_forward_hook(lambda _m, _i, out: seen.setdefault("fused", out)),
    ]
    with torch.no_grad():
        tiny_reg.forward_features(x)
        for handle in handles:
            handle.remove()
        attn = tiny_reg.get_last_self_attention(x)
        tokens = seen["normed"].shape[1]
        v = last.qkv(seen["normed"]).reshape(2, tokens, 3, 3, 64).permute(2, 0, 3, 1, 4)[2]
        by_probs = last.proj((attn @ v).transpose(1, 2).reshape(2, tokens, 192))
    assert attn.shape == (2, 3, 1 + 4 + 12, 1 + 4 + 12)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 17))
    torch.testing.assert_close(by_probs, seen["fused"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("offset", "antialias"), [(0.1, False), (0.0, True)])
@pytest.mark.parametrize("pixels", [(4 * 14 + 3, 9 * 14), (3 * 14, 5 * 14), (56, 60), (84, 84)])
def test_interpolation_follows_the_official_formula(
    offset: float, antialias: bool, pixels: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 6 * 6, 5)
    out = official_pos_embed(pos, *pixels, 14, offset=offset, antialias=antialias)
    torch.testing.assert_close(
        out, interpolate_pos_encoding(pos, *pixels, 14, offset, antialias), rtol=0, atol=0
    )
    # the same table without its CLS row (timm's register layout) resamples the same patch rows
    rows = official_pos_embed(pos[:, 1:], *pixels, 14, offset=offset, antialias=antialias)
    torch.testing.assert_close(rows, out[:, 1:], rtol=0, atol=0)


def test_official_interpolation_differs_from_timms_and_is_skipped_only_for_square_inputs() -> None:
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 36, 5)
    out = official_pos_embed(pos, 4 * 14, 9 * 14, 14, offset=0.1, antialias=False)
    # The +0.1 scale factor is not "resize to the grid": timm's resampling gives other values.
    timm_style = resample_abs_pos_embed(pos, new_size=(4, 9), num_prefix_tokens=1, antialias=True)
    assert not torch.allclose(out, timm_style, atol=1e-4)
    assert official_pos_embed(pos, 6 * 14, 6 * 14, 14, offset=0.1, antialias=False) is pos
    # Official quirk: same grid but a non-square pixel size (84 x 90) still goes through bicubic.
    assert official_pos_embed(pos, 84, 90, 14, offset=0.1, antialias=False) is not pos


def test_model_uses_its_configured_interpolation() -> None:
    plain, reg = create("vit_tiny"), create("vit_tiny_reg")
    assert (plain.model.interpolate_offset, plain.model.interpolate_antialias) == (0.1, False)
    assert (reg.model.interpolate_offset, reg.model.interpolate_antialias) == (0.0, True)
    for name in ("dinov2_vits14", "dino_vits16"):
        assert (get_config(name).interpolate_offset, get_config(name).interpolate_antialias) == (0.1, False)
    config = get_config("dinov2_vitb14_reg")
    assert (config.interpolate_offset, config.interpolate_antialias) == (0.0, True)


def test_swiglu_hidden_size_matches_the_official_rounding() -> None:
    model = create("dinov2_vitg14", depth=1)
    mlp = model.blocks[0].mlp
    assert mlp.fc1.weight.shape == (2 * 4096, 1536)  # ViT-g: 4096 hidden units (official `w12`)
    assert mlp.fc2.weight.shape == (1536, 4096)  # official `w3`
    x = torch.randn(2, 3, 1536)
    x1, x2 = mlp.fc1(x).chunk(2, dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.fc2(F.silu(x1) * x2))
