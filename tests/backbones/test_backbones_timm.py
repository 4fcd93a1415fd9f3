"""neco's ViT against timm's DINOv2 implementation, with timm weights converted by neco's loader."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

from neco.backbones import convert, create, detect_format


@pytest.fixture(scope="module")
def reg_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    reference = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, dynamic_img_size=True, img_size=518, num_classes=0
    ).eval()
    with torch.no_grad():
        # Random LayerScale / token values so that every parameter matters.
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    state = reference.state_dict()
    assert detect_format(state) == "timm"
    model = create("dinov2_vits14_reg", weights=state).eval()
    return reference, model


@pytest.mark.parametrize("size", [(224, 224), (448, 448), (224, 336)])
def test_register_model_equals_timm(reg_pair: tuple[nn.Module, nn.Module], size: tuple[int, int]) -> None:
    reference, model = reg_pair
    torch.manual_seed(1)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = reference.forward_features(x)  # (1, 1 + 4 + h*w, 384), final norm applied
        out = model.forward_features(x)
    grid = (size[0] // 14) * (size[1] // 14)
    assert out["x_norm_patchtokens"].shape == (1, grid, 384)
    torch.testing.assert_close(out["x_norm_clstoken"], expected[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["x_norm_regtokens"], expected[:, 1:5], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["x_norm_patchtokens"], expected[:, 5:], atol=1e-5, rtol=0)


def test_export_to_timm_loads_back_into_timm(reg_pair: tuple[nn.Module, nn.Module]) -> None:
    reference, model = reg_pair
    exported = convert(model.state_dict(), to="timm")
    missing, unexpected = reference.load_state_dict(exported, strict=False)
    assert not missing and not unexpected
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0)


def test_swiglu_model_equals_timm_giant_style_block() -> None:
    torch.manual_seed(2)
    # A tiny ViT-g: timm's packed SwiGLU with the same hidden width as the official rounding.
    reference = TimmViT(
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        init_values=1e-5,
        mlp_ratio=2.66667 * 2,
        mlp_layer=SwiGLUPacked,
        act_layer=nn.SiLU,
        num_classes=0,
    ).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model = create(
        "vit_tiny",
        embed_dim=48,
        depth=2,
        num_heads=3,
        ffn="swiglu",
        pos_grid=4,
        weights=reference.state_dict(),
    ).eval()
    assert model.blocks[0].mlp.fc1.weight.shape == (
        256,
        48,
    )  # official `w12`: 2 x 128, 128 = 2/3 * 192 rounded
    x = torch.randn(2, 3, 32, 32)  # the native grid: neither model interpolates
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(x)["x_norm_patchtokens"],
            reference.forward_features(x)[:, 1:],
            atol=1e-5,
            rtol=0,
        )
