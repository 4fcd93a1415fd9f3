"""Any timm vision transformer (DINOv3 included, through timm's Eva) behind neco's backbone interface.

`timm:<model name>[,key=value,...]` names any timm ViT (`timm:vit_small_patch16_224.augreg_in21k`,
`timm:deit_tiny_distilled_patch16_224,depth=2`); the `key=value` pairs are `timm.create_model`
keyword arguments and are part of the name, so a checkpoint that stores the name rebuilds the same shape.
The model is created without head or pooling (`num_classes=0, global_pool=''`) and, where the model
supports it, with `dynamic_img_size=True` (any input size; the remainder below a patch multiple is
dropped, like neco's own ViT). Token layout of timm's ViTs: [CLS, other prefix tokens, patches]; the
prefix tokens after the CLS token (registers, DeiT's distillation token) count as registers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import yaml
from torch import nn

from neco.backbones.registry import TIMM_PREFIX, BackboneConfig, get_config

__all__ = ["TimmViT", "create_timm_model", "parse_timm_name", "timm_config"]


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


def _build(model_name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, bool]:
    """`timm.create_model` without head (and pooling where the model allows); returns (model, dynamic size).

    Tried in order: no pooling with `dynamic_img_size=True`, then the model's own pooling (DeiT's
    distilled models insist on it), each without `dynamic_img_size` when the model does not take it.
    """
    import timm

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


@functools.lru_cache(maxsize=64)
def timm_config(name: str) -> BackboneConfig:
    """The neco config of `timm:<model>[,k=v...]`, read from the model built on the meta device (no memory)."""
    import timm

    model_name, kwargs = parse_timm_name(name)
    if not timm.is_model(model_name.split(".", 1)[0]):
        close = timm.list_models(f"*{model_name.split('.', 1)[0].split('_')[0]}*")[:12]
        raise ValueError(f"backbone {name!r}: timm has no model {model_name!r} (similar names: {close})")
    with torch.device("meta"):
        model, dynamic = _build(model_name, kwargs)
    _check_vit(model, name)
    has_cls = getattr(model, "cls_token", None) is not None
    attn = getattr(model.blocks[-1], "attn", None)
    img_size = getattr(model.patch_embed, "img_size", None) or (224, 224)
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    return BackboneConfig(
        name=name,
        family="timm",
        patch_size=int(model.patch_embed.patch_size[0]),
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=int(getattr(attn, "num_heads", 0)),
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


def create_timm_model(config: BackboneConfig) -> tuple[nn.Module, bool]:
    """Build the timm model of `config` (random init); shape overrides become timm kwargs."""
    if not config.built_by_timm or not config.timm_name:
        raise ValueError(f"backbone {config.name!r} (family {config.family!r}) is not built by timm")
    base = get_config(config.name)
    if config.num_register_tokens != base.num_register_tokens:
        raise ValueError(
            f"backbone {config.name!r}: `num_register_tokens` is fixed by the timm model "
            f"({base.num_register_tokens}) but {config.num_register_tokens} was asked"
        )
    kwargs: dict[str, Any] = dict(config.timm_kwargs)
    for field in ("embed_dim", "depth", "num_heads"):
        if getattr(config, field) != getattr(base, field):
            kwargs[field] = getattr(config, field)
    if config.drop_path_rate:
        kwargs["drop_path_rate"] = config.drop_path_rate
    model_name = config.timm_name.split(".", 1)[0] if config.family == "dinov3" else config.timm_name
    return _build(model_name, kwargs)


class TimmViT(nn.Module):
    """A timm ViT with neco's backbone interface; its timm model is `self.model` (state-dict prefix `model.`)."""

    def __init__(self, config: BackboneConfig, *, init: bool = True) -> None:
        super().__init__()
        del init  # timm initialises its own parameters
        if config.drop_path_rate < 0 or config.drop_path_rate >= 1:
            raise ValueError(f"`drop_path_rate` must be in [0, 1) but is {config.drop_path_rate}")
        self.config = config
        self.model, self.dynamic_img_size = create_timm_model(config)
        _check_vit(self.model, config.name)
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.embed_dim = self.num_features = int(self.model.embed_dim)
        self.num_heads = config.num_heads
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        self.has_class_token = getattr(self.model, "cls_token", None) is not None
        self.num_register_tokens = self.num_prefix_tokens - int(self.has_class_token)
        self.mask_token = None  # NeCo never masks; timm's ViTs have no mask token

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks of the timm model (for `trainable_blocks`)."""
        return self.model.blocks

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input and drop the pixels beyond the last whole patch (like neco's ViT patch conv)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"input must be (B, 3, H, W) but is {tuple(x.shape)}")
        p = self.patch_size
        if x.shape[2] < p or x.shape[3] < p:
            raise ValueError(f"input H and W must be >= patch size {p} but are {tuple(x.shape[2:])}")
        x = x[..., : x.shape[2] // p * p, : x.shape[3] // p * p]
        if not self.dynamic_img_size:
            expected = tuple(self.model.patch_embed.img_size)
            if tuple(x.shape[2:]) != expected:
                raise ValueError(
                    f"{self.config.name} has a fixed input size {expected} (its timm model has no "
                    f"dynamic_img_size) but the input is {tuple(x.shape[2:])}"
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

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Final-norm CLS (B, D), registers (B, R, D), patches (B, h*w, D) and pre-norm tokens (B, T, D)."""
        if masks is not None:
            raise ValueError(f"`masks` need a mask token, which {self.config.name} does not have")
        prenorm: list[torch.Tensor] = []
        norm = getattr(self.model, "norm", None)
        hooks = (
            [(norm, lambda _m, inputs, _o: prenorm.append(inputs[0]))] if isinstance(norm, nn.Module) else []
        )
        tokens = self._run(x, hooks)  # (B, T, D), T = prefix + h*w
        patches = tokens[:, self.num_prefix_tokens :]
        return {
            # Models without a CLS token (e.g. SigLIP) get the mean patch token in its place.
            "x_norm_clstoken": tokens[:, 0] if self.has_class_token else patches.mean(dim=1),
            "x_norm_regtokens": tokens[:, int(self.has_class_token) : self.num_prefix_tokens],
            "x_norm_patchtokens": patches,
            "x_prenorm": prenorm[0] if prenorm else tokens,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final-norm CLS token (B, D) (the mean patch token for models without CLS)."""
        return self.forward_features(x)["x_norm_clstoken"]

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last `n` blocks (or the blocks listed in `n`), like neco's `VisionTransformer`."""
        depth = len(self.blocks)
        take = list(range(depth - n, depth)) if isinstance(n, int) else list(n)
        if not take or any(i < 0 or i >= depth for i in take):
            raise ValueError(f"`n` must select blocks in [0, {depth}) but selects {take}")
        outputs: dict[int, torch.Tensor] = {}
        hooks = [(self.blocks[i], lambda _m, _i, out, i=i: outputs.__setitem__(i, out)) for i in take]
        self._run(x, hooks)
        layers = [outputs[i] for i in take]
        if norm:
            layers = [self.model.norm(out) for out in layers]
        class_tokens = [out[:, 0] for out in layers]
        patches = [out[:, self.num_prefix_tokens :] for out in layers]
        if reshape:
            batch, grid_h, grid_w = x.shape[0], x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
            patches = [p.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)

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
        fused = attn.fused_attn
        attn.fused_attn = False
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
