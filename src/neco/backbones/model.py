"""Every backbone is a timm model behind one wrapper with the DINOv2 interface neco's code calls.

DINOv2 (with or without registers), DINO v1 and the tiny ViTs are timm `VisionTransformer`s with one
override, `_OfficialViT`, which reproduces the official position-embedding interpolation (timm's
differs for the models without registers). DINOv3 is timm's Eva; `timm:<model name>[,key=value,...]`
names any timm ViT (the pairs are `timm.create_model` arguments, so a stored name rebuilds the shape).

Shapes: B = batch, T = tokens (1 + R + h*w), R = register tokens, D = embed dim, p = patch size,
(h, w) = (H // p, W // p) the patch grid (the pixels beyond the last whole patch are dropped).
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
import yaml
from timm.layers import SwiGLUPacked, trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, BackboneConfig, get_config

__all__ = ["Backbone", "official_pos_embed", "parse_timm_name", "patch_grid", "timm_config"]


def official_pos_embed(
    pos_embed: torch.Tensor, height: int, width: int, patch_size: int, *, offset: float, antialias: bool
) -> torch.Tensor:
    """The official DINO / DINOv2 resampling of a `(1, [1 +] M*M, D)` position embedding for `height` x `width` pixels.

    No interpolation when the grid is M x M *and* the input square; otherwise bicubic in float32, with
    `scale_factor = ((h + offset) / M, (w + offset) / M)` when `offset` > 0 (DINO v1, DINOv2 without
    registers) or to `size = (h, w)` (DINOv2 with registers, antialiased). A leading CLS row is kept.
    """
    rows = pos_embed.shape[1]
    cls_rows = 0 if math.isqrt(rows) ** 2 == rows else 1
    side = math.isqrt(rows - cls_rows)
    if side * side != rows - cls_rows:
        raise ValueError(f"`pos_embed` must hold [1 +] M*M rows but holds {rows}")
    grid_h, grid_w = height // patch_size, width // patch_size
    if grid_h * grid_w == side * side and height == width:
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, cls_rows:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, M, M)
    scale = {"scale_factor": ((grid_h + offset) / side, (grid_w + offset) / side)} if offset else {}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **(scale or {"size": (grid_h, grid_w)}))
    if grid.shape[-2:] != (grid_h, grid_w):
        raise ValueError(f"interpolated grid must be {(grid_h, grid_w)} but is {tuple(grid.shape[-2:])}")
    patches = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)  # (1, h*w, D)
    return torch.cat([pos_embed[:, :cls_rows].float(), patches], dim=1).to(pos_embed.dtype)


class _OfficialViT(VisionTransformer):
    """timm's ViT whose position embedding is resampled as the official DINO / DINOv2 code does."""

    def __init__(self, *, interpolate_offset: float, interpolate_antialias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interpolate_offset, self.interpolate_antialias = interpolate_offset, interpolate_antialias
        self._pixels = (0, 0)  # the input's size before the remainder is cropped: the official rule reads it

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        batch, grid_h, grid_w, dim = x.shape  # dynamic size: NHWC patch tokens
        patch = self.patch_embed.patch_size[0]
        height, width = self._pixels
        if (height // patch, width // patch) != (grid_h, grid_w):  # not called through `Backbone`
            height, width = grid_h * patch, grid_w * patch
        offset, antialias = self.interpolate_offset, self.interpolate_antialias
        pos = official_pos_embed(self.pos_embed, height, width, patch, offset=offset, antialias=antialias)
        x = x.reshape(batch, grid_h * grid_w, dim)
        prefix = [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:  # registers: the CLS token holds its own position row (timm's layout)
            return torch.cat([*prefix, x + pos], dim=1)
        return torch.cat([*prefix, x], dim=1) + pos

    def set_pos_grid(self, side: int) -> None:
        """Give the (not yet loaded) position embedding a `side` x `side` pretrained grid."""
        rows = side * side + (0 if self.no_embed_class else 1)
        if rows != self.pos_embed.shape[1]:
            self.pos_embed = nn.Parameter(self.pos_embed.new_zeros(1, rows, self.embed_dim))
            patch = self.patch_embed.patch_size[0]
            self.patch_embed.img_size, self.patch_embed.grid_size = (side * patch,) * 2, (side, side)
            self.patch_embed.num_patches = side * side


def _official_vit(config: BackboneConfig, init: bool) -> _OfficialViT:
    """A DINOv2 / DINO ViT of `config` in timm; random numbers drawn in the order neco's own ViT drew them."""
    mlp: dict[str, Any] = {"mlp_ratio": config.mlp_ratio}
    if config.ffn == "swiglu":  # the official width: 2/3 of the MLP's, rounded up to a multiple of 8
        hidden = (int(int(config.embed_dim * config.mlp_ratio) * 2 / 3) + 7) // 8 * 8
        mlp = {
            "mlp_layer": SwiGLUPacked,
            "act_layer": nn.SiLU,
            "mlp_ratio": (2 * hidden + 0.5) / config.embed_dim,
        }
    with torch.random.fork_rng(devices=[]):  # timm's constructor draws nothing from the caller's generator
        vit = _OfficialViT(
            interpolate_offset=config.interpolate_offset,
            interpolate_antialias=config.interpolate_antialias,
            img_size=config.pos_grid * config.patch_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            init_values=config.layerscale_init,
            reg_tokens=config.num_register_tokens,
            no_embed_class=config.num_register_tokens > 0,
            dynamic_img_size=True,
            num_classes=0,
            global_pool="",
            drop_path_rate=config.drop_path_rate,
            weight_init="skip",
            **mlp,
        )
    # Why this order: seeded runs (the tiny-start pretrainers, the demo) stay reproducible bit for bit.
    linears = [m for m in vit.blocks.modules() if isinstance(m, nn.Linear)]
    for module in [vit.patch_embed.proj, *linears]:
        module.reset_parameters()
    tokens = [t for t in (vit.cls_token, vit.reg_token, vit.pos_embed) if t is not None]
    with torch.no_grad():
        for token in tokens:
            token.zero_()
    if init:  # the official table has a CLS row; timm's register layout folds it into the CLS token
        rows = vit.pos_embed.shape[1] + int(vit.no_embed_class)
        pos = vit.pos_embed.new_empty(1, rows, vit.embed_dim) if vit.no_embed_class else vit.pos_embed
        trunc_normal_(pos, std=0.02)
        for token in tokens[:-1]:
            nn.init.normal_(token, std=1e-6)
        if vit.no_embed_class:
            with torch.no_grad():
                vit.cls_token.add_(pos[:, :1])
                vit.pos_embed.copy_(pos[:, 1:])
        for module in linears:
            trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    return vit


def parse_timm_name(name: str) -> tuple[str, dict[str, Any]]:
    """Split `timm:<model>[,key=value,...]` into the timm model name and its create_model kwargs."""
    model_name, *pairs = name[len(TIMM_PREFIX) :].split(",")
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"backbone {name!r}: `{pair}` must be key=value (timm.create_model arguments)")
        kwargs[key.strip()] = yaml.safe_load(raw)
    if not model_name:
        raise ValueError(f"backbone {name!r} names no timm model; e.g. timm:vit_small_patch16_224")
    return model_name, kwargs


def _create_timm(model_name: str, kwargs: dict[str, Any], name: str) -> tuple[nn.Module, bool]:
    """`timm.create_model` without head, checked to be a ViT; returns (model, dynamic input size).

    Tried in order: no pooling with `dynamic_img_size=True`, then the model's own pooling (DeiT's
    distilled models insist on it), each without `dynamic_img_size` when the model does not take it.
    """
    errors = []
    for extra in (
        {"global_pool": "", "dynamic_img_size": True},
        {"dynamic_img_size": True},
        {"global_pool": ""},
        {},
    ):
        try:
            model = timm.create_model(model_name, pretrained=False, num_classes=0, **extra, **kwargs)
            break
        except (TypeError, AssertionError, ValueError) as err:
            errors.append(f"{extra}: {err}")
    else:
        raise ValueError(f"timm.create_model({model_name!r}, {kwargs}) failed: " + "; ".join(errors))
    missing = [
        a for a in ("patch_embed", "blocks", "num_prefix_tokens", "embed_dim") if not hasattr(model, a)
    ]
    if missing:
        raise ValueError(
            f"backbone {name!r}: {type(model).__name__} is not a vision transformer neco can wrap "
            f"(it lacks {missing}; timm's VisionTransformer / Eva families have them)"
        )
    patch = tuple(getattr(model.patch_embed, "patch_size", ()))
    if len(patch) != 2 or patch[0] != patch[1]:
        raise ValueError(f"backbone {name!r}: the patch size must be square but is {patch}")
    return model, "dynamic_img_size" in extra


@functools.lru_cache(maxsize=64)
def timm_config(name: str) -> BackboneConfig:
    """The neco config of `timm:<model>[,k=v...]`, read from the model built on the meta device (no memory)."""
    model_name, kwargs = parse_timm_name(name)
    if not timm.is_model(model_name.split(".", 1)[0]):
        close = difflib.get_close_matches(model_name.split(".", 1)[0], timm.list_models(), n=5, cutoff=0.6)
        hint = (
            f"did you mean {close[0]!r}? (close names: {close})"
            if close
            else "`timm.list_models()` lists them"
        )
        raise ValueError(f"backbone {name!r}: timm has no model {model_name!r}; {hint}")
    with torch.device("meta"):
        model, dynamic = _create_timm(model_name, kwargs, name)
    has_cls = getattr(model, "cls_token", None) is not None
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    return BackboneConfig(
        name,
        "timm",
        int(model.patch_embed.patch_size[0]),
        int(model.embed_dim),
        len(model.blocks),
        int(getattr(getattr(model.blocks[-1], "attn", None), "num_heads", 0)),
        int(model.num_prefix_tokens) - int(has_cls),
        pos_grid=0,
        timm_name=model_name,
        mean=tuple(pretrained_cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(pretrained_cfg.get("std", IMAGENET_STD)),
        description=f"timm {model_name} ({type(model).__name__}{', fixed input size' if not dynamic else ''})",
    )


def _timm_family_model(config: BackboneConfig) -> tuple[nn.Module, bool]:
    """The timm model of a DINOv3 / `timm:` config (random init); shape overrides become timm kwargs."""
    base = get_config(config.name)
    if config.num_register_tokens != base.num_register_tokens:
        raise ValueError(
            f"backbone {config.name!r}: `num_register_tokens` is fixed by the timm model "
            f"({base.num_register_tokens}) but {config.num_register_tokens} was asked"
        )
    # a `timm:` name carries its create_model arguments; DINOv3 is built untagged
    model_name, kwargs = (
        parse_timm_name(config.name) if config.family == "timm" else (config.timm_name.split(".", 1)[0], {})
    )
    for key in ("embed_dim", "depth", "num_heads", "drop_path_rate"):
        if getattr(config, key) != getattr(base, key):
            kwargs[key] = getattr(config, key)
    return _create_timm(model_name, kwargs, config.name)


class Backbone(nn.Module):
    """A timm ViT with the DINOv2 interface; its timm model is `self.model` (state-dict prefix `model.`).

    Token order [CLS, registers, patches]; prefix tokens after the CLS token (registers, DeiT's
    distillation token) count as registers.
    """

    def __init__(self, config: BackboneConfig, *, init: bool = True) -> None:
        super().__init__()
        if not 0 <= config.drop_path_rate < 1:
            raise ValueError(f"`drop_path_rate` must be in [0, 1) but is {config.drop_path_rate}")
        if config.num_register_tokens < 0:
            raise ValueError(f"`num_register_tokens` must be >= 0 but is {config.num_register_tokens}")
        if config.embed_dim % max(config.num_heads, 1):
            raise ValueError(
                f"`embed_dim` must be divisible by `num_heads` ({config.num_heads}) but is {config.embed_dim}"
            )
        self.config = config
        if config.built_by_timm:
            self.model, self.dynamic_img_size = _timm_family_model(config)
        else:
            self.model, self.dynamic_img_size = _official_vit(config, init), True
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.embed_dim = self.num_features = int(self.model.embed_dim)
        self.num_heads = config.num_heads
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        self.has_class_token = getattr(self.model, "cls_token", None) is not None
        self.num_register_tokens = self.num_prefix_tokens - int(self.has_class_token)

    @property
    def blocks(self) -> nn.Module:
        """The transformer blocks of the timm model."""
        return self.model.blocks

    def _run(self, x: torch.Tensor, hooks: Sequence[tuple[nn.Module, Callable]] = ()) -> torch.Tensor:
        """Check x (B, 3, H, W), crop it to whole patches, run timm's `forward_features` with temporary hooks."""
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"input must be (B, 3, H, W) but is {tuple(x.shape)}")
        if x.shape[2] < p or x.shape[3] < p:
            raise ValueError(f"input H and W must be >= patch size {p} but are {tuple(x.shape[2:])}")
        if isinstance(self.model, _OfficialViT):
            self.model._pixels = (x.shape[2], x.shape[3])
        x = x[..., : x.shape[2] // p * p, : x.shape[3] // p * p]
        if not self.dynamic_img_size and tuple(x.shape[2:]) != tuple(self.model.patch_embed.img_size):
            raise ValueError(
                f"{self.config.name} has a fixed input size {tuple(self.model.patch_embed.img_size)} (its timm "
                f"model has no dynamic_img_size) but the input is {tuple(x.shape[2:])}"
            )
        handles = [module.register_forward_hook(hook) for module, hook in hooks]
        try:
            return self.model.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Final-norm CLS (B, D), registers (B, R, D), patches (B, h*w, D) and pre-norm tokens (B, T, D)."""
        prenorm: list[torch.Tensor] = []
        norm = getattr(self.model, "norm", None)
        hooks = [(norm, lambda _m, i, _o: prenorm.append(i[0]))] if isinstance(norm, nn.Module) else []
        tokens = self._run(x, hooks)  # (B, T, D)
        patches = tokens[:, self.num_prefix_tokens :]
        return {
            # Models without a CLS token (e.g. SigLIP) get the mean patch token in its place.
            "x_norm_clstoken": tokens[:, 0] if self.has_class_token else patches.mean(dim=1),
            "x_norm_regtokens": tokens[:, int(self.has_class_token) : self.num_prefix_tokens],
            "x_norm_patchtokens": patches,
            "x_prenorm": prenorm[0] if prenorm else tokens,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final-norm CLS token (B, D), like the official hub model (the mean patch token without CLS)."""
        return self.forward_features(x)["x_norm_clstoken"]

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last `n` blocks (or of the blocks listed in `n`), like the official model.

        Returns a tuple of patch tokens (B, h*w, D) (or (B, D, h, w) with `reshape`), or of
        (patch tokens, CLS (B, D)) pairs with `return_class_token`.
        """
        depth = len(self.blocks)
        take = list(range(depth - n, depth)) if isinstance(n, int) else list(n)
        if not take or any(i < 0 or i >= depth for i in take):
            raise ValueError(f"`n` must select blocks in [0, {depth}) but selects {take}")
        outputs: dict[int, torch.Tensor] = {}
        self._run(x, [(self.blocks[i], lambda _m, _i, out, i=i: outputs.__setitem__(i, out)) for i in take])
        layers = [self.model.norm(outputs[i]) if norm else outputs[i] for i in take]
        patches = [out[:, self.num_prefix_tokens :] for out in layers]
        if reshape:
            batch, grid_h, grid_w = x.shape[0], x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
            patches = [p.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        return tuple(zip(patches, [out[:, 0] for out in layers])) if return_class_token else tuple(patches)

    def get_last_self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities (B, heads, T, T) of the last block; token order [CLS, registers, patches].

        Read with a forward hook on the last block's attention dropout, whose input is the softmax
        matrix on timm's unfused attention path (taken for this call only); RoPE and q/k norms are
        thus included exactly as the model computes them.
        """
        name, attn = self.config.name, getattr(self.blocks[-1], "attn", None)
        if not self.has_class_token:
            raise ValueError(f"{name} has no CLS token; the attention-based evaluations read the CLS row")
        captured: list[torch.Tensor] = []
        if hasattr(attn, "fused_attn") and isinstance(getattr(attn, "attn_drop", None), nn.Module):
            fused, attn.fused_attn = attn.fused_attn, False
            try:
                self._run(x, [(attn.attn_drop, lambda _m, inputs, _o: captured.append(inputs[0]))])
            finally:
                attn.fused_attn = fused
        if len(captured) != 1 or captured[0].ndim != 4:
            raise ValueError(
                f"cannot read the last-block attention of {name}: its attention module {type(attn).__name__} "
                "has no unfused softmax path (`fused_attn`, `attn_drop` given a (B, heads, T, T) matrix)"
            )
        return captured[0]

    def extra_repr(self) -> str:
        """Name and the main sizes in `print(model)`."""
        return (
            f"name={self.config.name}, patch_size={self.patch_size}, embed_dim={self.embed_dim}, "
            f"depth={len(self.blocks)}, registers={self.num_register_tokens}"
        )


def patch_grid(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Final-LayerNorm patch tokens of one batch (B, 3, H, W) as a grid (B, D, H // p, W // p)."""
    tokens = model.forward_features(images)["x_norm_patchtokens"]  # (B, h*w, D)
    grid_h, grid_w = images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size
    batch, count, dim = tokens.shape
    if count != grid_h * grid_w:
        raise ValueError(f"model returned {count} patch tokens but the grid is {grid_h}x{grid_w}")
    return tokens.transpose(1, 2).reshape(batch, dim, grid_h, grid_w)  # (B, D, h, w)
