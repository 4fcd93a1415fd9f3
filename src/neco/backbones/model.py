"""Every backbone is a timm model behind one wrapper with the DINOv2 interface neco's code calls.

DINOv2 (with or without registers), DINO v1 and the tiny test / demo ViTs are timm
`VisionTransformer`s with one override, `_OfficialViT`, which reproduces the official DINO / DINOv2
position-embedding interpolation (timm's differs for the models without registers). DINOv3 is timm's
Eva; `timm:<model name>[,key=value,...]` names any timm ViT (the pairs are `timm.create_model`
arguments, part of the name, so a checkpoint that stores the name rebuilds the same shape).

Shapes: B = batch, T = tokens (1 + R + h*w), R = register tokens, D = embed dim, p = patch size,
(h, w) = (H // p, W // p) the patch grid (the pixels beyond the last whole patch are dropped).
"""

from __future__ import annotations

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

from neco.backbones.registry import TIMM_PREFIX, BackboneConfig, get_config

__all__ = ["Backbone", "official_pos_embed", "parse_timm_name", "patch_grid", "timm_config"]


def official_pos_embed(
    pos_embed: torch.Tensor, height: int, width: int, patch_size: int, *, offset: float, antialias: bool
) -> torch.Tensor:
    """The official DINO / DINOv2 resampling of a `(1, [1 +] M*M, D)` position embedding for `height` x `width` pixels.

    No interpolation when the grid is M x M *and* the input square; otherwise bicubic in float32, with
    `scale_factor = ((h + offset) / M, (w + offset) / M)` when `offset` > 0 (DINO v1, DINOv2 without
    registers) or to `size = (h, w)` (DINOv2 with registers, antialiased). A leading CLS row (when the
    table has 1 + M*M rows) is kept as is. Returns (1, [1 +] h*w, D) in the dtype of `pos_embed`.
    """
    rows = pos_embed.shape[1]
    side = math.isqrt(rows)
    cls_rows = 0 if side * side == rows else 1
    side = math.isqrt(rows - cls_rows)
    if side * side != rows - cls_rows:
        raise ValueError(f"`pos_embed` must hold [1 +] M*M rows but holds {rows}")
    grid_h, grid_w = height // patch_size, width // patch_size
    if grid_h * grid_w == side * side and height == width:
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, cls_rows:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, M, M)
    if offset:
        size = {"scale_factor": ((grid_h + offset) / side, (grid_w + offset) / side)}
    else:
        size = {"size": (grid_h, grid_w)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **size)  # (1, D, h, w)
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
        pos = official_pos_embed(
            self.pos_embed,
            height,
            width,
            patch,
            offset=self.interpolate_offset,
            antialias=self.interpolate_antialias,
        )
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
    swiglu: dict[str, Any] = {}
    if config.ffn == "swiglu":  # the official width: 2/3 of the MLP's, rounded up to a multiple of 8
        hidden = (int(int(config.embed_dim * config.mlp_ratio) * 2 / 3) + 7) // 8 * 8
        swiglu = {
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
            **({"mlp_ratio": config.mlp_ratio} | swiglu),
        )
    # Why this order: seeded runs (the tiny-start pretrainers, the demo) stay reproducible bit for bit.
    linears = [m for m in vit.blocks.modules() if isinstance(m, nn.Linear)]
    for module in [vit.patch_embed.proj, *linears]:
        module.reset_parameters()
    with torch.no_grad():
        for token in (vit.cls_token, vit.reg_token, vit.pos_embed):
            if token is not None:
                token.zero_()
    if init:  # the official table has a CLS row; timm's register layout folds it into the CLS token
        pos = (
            vit.pos_embed.new_empty(1, vit.pos_embed.shape[1] + 1, vit.embed_dim)
            if vit.no_embed_class
            else vit.pos_embed
        )
        trunc_normal_(pos, std=0.02)
        nn.init.normal_(vit.cls_token, std=1e-6)
        if vit.reg_token is not None:
            nn.init.normal_(vit.reg_token, std=1e-6)
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
    if not name.startswith(TIMM_PREFIX):
        raise ValueError(f"a timm backbone name must start with {TIMM_PREFIX!r} but is {name!r}")
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


def _create_timm(model_name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, bool]:
    """`timm.create_model` without head (and pooling where the model allows); returns (model, dynamic size).

    Tried in order: no pooling with `dynamic_img_size=True`, then the model's own pooling (DeiT's
    distilled models insist on it), each without `dynamic_img_size` when the model does not take it.
    """
    attempts = [
        {"global_pool": "", "dynamic_img_size": True},
        {"dynamic_img_size": True},
        {"global_pool": ""},
        {},
    ]
    errors = []
    for extra in attempts:
        try:
            model = timm.create_model(model_name, pretrained=False, num_classes=0, **extra, **kwargs)
        except (TypeError, AssertionError, ValueError) as err:
            errors.append(f"{extra}: {err}")
            continue
        return model, bool(extra.get("dynamic_img_size"))
    raise ValueError(f"timm.create_model({model_name!r}, {kwargs}) failed: " + "; ".join(errors))


def _check_vit(model: nn.Module, name: str) -> None:
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


def _closest_timm_names(model_name: str) -> list[str]:
    """timm's model names nearest to `model_name` by edit distance over the whole name."""
    import difflib

    return difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)


@functools.lru_cache(maxsize=64)
def timm_config(name: str) -> BackboneConfig:
    """The neco config of `timm:<model>[,k=v...]`, read from the model built on the meta device (no memory)."""
    model_name, kwargs = parse_timm_name(name)
    if not timm.is_model(model_name.split(".", 1)[0]):
        close = _closest_timm_names(model_name.split(".", 1)[0])
        hint = (
            f"did you mean {close[0]!r}? (close names: {close})"
            if close
            else "`timm.list_models()` lists them"
        )
        raise ValueError(f"backbone {name!r}: timm has no model {model_name!r}; {hint}")
    with torch.device("meta"):
        model, dynamic = _create_timm(model_name, kwargs)
    _check_vit(model, name)
    has_cls = getattr(model, "cls_token", None) is not None
    img_size = getattr(model.patch_embed, "img_size", None) or (224, 224)
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    return BackboneConfig(
        name=name,
        family="timm",
        patch_size=int(model.patch_embed.patch_size[0]),
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=int(getattr(getattr(model.blocks[-1], "attn", None), "num_heads", 0)),
        num_register_tokens=int(model.num_prefix_tokens) - int(has_cls),
        mask_token=False,
        pos_grid=0,
        img_size=int(img_size[0]),
        timm_name=model_name,
        mean=tuple(pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(pretrained_cfg.get("std", (0.229, 0.224, 0.225))),
        description=f"timm {model_name} ({type(model).__name__}{', fixed input size' if not dynamic else ''})",
        timm_kwargs=tuple(sorted(kwargs.items())),
    )


def _timm_family_model(config: BackboneConfig) -> tuple[nn.Module, bool]:
    """The timm model of a DINOv3 / `timm:` config (random init); shape overrides become timm kwargs."""
    base = get_config(config.name)
    if config.num_register_tokens != base.num_register_tokens:
        raise ValueError(
            f"backbone {config.name!r}: `num_register_tokens` is fixed by the timm model "
            f"({base.num_register_tokens}) but {config.num_register_tokens} was asked"
        )
    kwargs: dict[str, Any] = dict(config.timm_kwargs)
    kwargs.update(
        {
            f: getattr(config, f)
            for f in ("embed_dim", "depth", "num_heads")
            if getattr(config, f) != getattr(base, f)
        }
    )
    if config.drop_path_rate:
        kwargs["drop_path_rate"] = config.drop_path_rate
    model_name = config.timm_name.split(".", 1)[0] if config.family == "dinov3" else str(config.timm_name)
    return _create_timm(model_name, kwargs)


class Backbone(nn.Module):
    """A timm ViT with the DINOv2 interface; its timm model is `self.model` (state-dict prefix `model.`).

    Token order [CLS, registers, patches]; prefix tokens after the CLS token (registers, DeiT's
    distillation token) count as registers.
    """

    def __init__(self, config: BackboneConfig, *, init: bool = True) -> None:
        super().__init__()
        if config.drop_path_rate < 0 or config.drop_path_rate >= 1:
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
        _check_vit(self.model, config.name)
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

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input (B, 3, H, W); drop the pixels beyond the last whole patch for models that do not."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"input must be (B, 3, H, W) but is {tuple(x.shape)}")
        p = self.patch_size
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
        return x

    def _run(self, x: torch.Tensor, hooks: Sequence[tuple[nn.Module, Callable]] = ()) -> torch.Tensor:
        """timm's `forward_features` (final norm applied) with temporary forward hooks."""
        handles = [module.register_forward_hook(hook) for module, hook in hooks]
        try:
            return self.model.forward_features(self._prepare(x))
        finally:
            for handle in handles:
                handle.remove()

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Final-norm CLS (B, D), registers (B, R, D), patches (B, h*w, D) and pre-norm tokens (B, T, D)."""
        prenorm: list[torch.Tensor] = []
        norm = getattr(self.model, "norm", None)
        hooks = (
            [(norm, lambda _m, inputs, _o: prenorm.append(inputs[0]))] if isinstance(norm, nn.Module) else []
        )
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
        class_tokens = [out[:, 0] for out in layers]
        patches = [out[:, self.num_prefix_tokens :] for out in layers]
        if reshape:
            batch, grid_h, grid_w = x.shape[0], x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
            patches = [p.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        return tuple(zip(patches, class_tokens)) if return_class_token else tuple(patches)

    def get_last_self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities (B, heads, T, T) of the last block; token order [CLS, registers, patches].

        Read with a forward hook on the last block's attention dropout, whose input is the softmax
        matrix on timm's unfused attention path (taken for this call only); RoPE and q/k norms are
        thus included exactly as the model computes them.
        """
        name = self.config.name
        if not self.has_class_token:
            raise ValueError(f"{name} has no CLS token; the attention-based evaluations read the CLS row")
        attn = getattr(self.blocks[-1], "attn", None)
        if not (hasattr(attn, "fused_attn") and isinstance(getattr(attn, "attn_drop", None), nn.Module)):
            raise ValueError(
                f"cannot read the last-block attention of {name}: its attention module "
                f"{type(attn).__name__} has no unfused softmax path (`fused_attn` and `attn_drop`)"
            )
        captured: list[torch.Tensor] = []
        fused, attn.fused_attn = attn.fused_attn, False
        try:
            self._run(x, [(attn.attn_drop, lambda _m, inputs, _o: captured.append(inputs[0]))])
        finally:
            attn.fused_attn = fused
        if len(captured) != 1 or captured[0].ndim != 4:
            raise ValueError(
                f"cannot read the last-block attention of {name}: its attention module "
                f"{type(attn).__name__} did not pass a (B, heads, T, T) matrix through `attn_drop`"
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
