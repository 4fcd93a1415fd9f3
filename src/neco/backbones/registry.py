"""The backbone registry: a table from neco names to architectures, timm names and weight sources."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TIMM_PREFIX", "BackboneConfig", "WeightSource", "get_config"]
__all__ += ["list_backbones"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class WeightSource:
    """Where pretrained weights come from: a URL, a Hugging Face hub file, a package asset or a gated file."""

    filename: str
    url: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    asset: str | None = None  # a file shipped inside the package (`neco/assets/<asset>`)
    # Gated (DINOv3): never downloaded; says where a user gets the file. `*` in `filename` globs the hash.
    gated: str | None = None

    def download_url(self) -> str:
        """The plain HTTPS address of the file (for `hf_repo` sources, the resolve URL on `$HF_ENDPOINT`)."""
        if self.asset is not None:
            return f"package file neco/assets/{self.asset}"
        if self.hf_repo is not None:  # $HF_ENDPOINT: a hub mirror, as huggingface_hub reads it
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
            return f"{endpoint}/{self.hf_repo}/resolve/main/{self.hf_filename}"
        return str(self.gated or self.url)


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture and weight source of one registered backbone (frozen; `with_overrides` changes it)."""

    name: str
    # "dinov2" (LayerScale, mask token), "dino" (v1: neither), both timm ViTs with the official position
    # interpolation; "dinov3" (timm's Eva) and "timm" (`timm:<model name>`) are timm models as they are.
    family: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    num_register_tokens: int = 0
    mlp_ratio: float = 4.0
    ffn: str = "mlp"  # "mlp" or "swiglu" (ViT-g)
    layerscale_init: float | None = 1.0  # None: no LayerScale (DINO v1)
    # The official interpolation: register models resize to the grid with antialias, the others by
    # scale_factor (grid + 0.1) / M without.
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    pos_grid: int = 37  # the pretrained position-embedding grid is pos_grid x pos_grid (0: RoPE / timm's own)
    drop_path_rate: float = 0.0
    weights: WeightSource | None = None
    timm_name: str | None = None
    hf_name: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    description: str = ""

    @property
    def built_by_timm(self) -> bool:
        """True for the families whose timm model is used as timm defines it (DINOv3, `timm:`)."""
        return self.family in ("dinov3", "timm")

    @property
    def mask_token(self) -> bool:
        """Whether official files of this family carry DINOv2's (training-only) `mask_token`."""
        return self.family == "dinov2"

    def with_overrides(self, **overrides: Any) -> BackboneConfig:
        """A copy with some fields replaced; unknown fields raise a ValueError listing the valid ones."""
        valid = {f.name for f in fields(self)} - {"name", "family"}
        if unknown := sorted(set(overrides) - valid):
            raise ValueError(f"backbone overrides {unknown} are unknown; valid overrides: {sorted(valid)}")
        return replace(self, **overrides)


def list_backbones() -> list[str]:
    """All registered backbone names, sorted (any timm ViT is also accepted as `timm:<model name>`)."""
    return sorted(_REGISTRY)


def get_config(name: str) -> BackboneConfig:
    """The config registered under `name`, or built for `timm:<model name>`; a ValueError otherwise."""
    if name.startswith(TIMM_PREFIX):
        from neco.backbones.model import timm_config

        return timm_config(name)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_backbones(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown backbone {name!r} (`--backbone` / `model.backbone`): {hint}it must be one of "
            f"{list_backbones()} (`neco backbones` lists them) or `timm:<timm model name>`"
        )
    return _REGISTRY[name]


_SIZES = {"s": ("small", 384, 12, 6), "b": ("base", 768, 12, 12), "l": ("large", 1024, 24, 16)}
_SIZES["g"] = ("giant", 1536, 40, 24)
_FB = "https://dl.fbaipublicfiles.com"
_DINOV3_LICENSE = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
# DINOv3 (timm's Eva, RoPE, 4 registers): neco name -> (timm name, embed_dim, depth, heads, label)
_DINOV3 = {
    "dinov3_vits16": ("vit_small_patch16_dinov3", 384, 12, 6, "ViT-S/16"),
    "dinov3_vits16plus": ("vit_small_plus_patch16_dinov3", 384, 12, 6, "ViT-S+/16"),
    "dinov3_vitb16": ("vit_base_patch16_dinov3", 768, 12, 12, "ViT-B/16"),
    "dinov3_vitl16": ("vit_large_patch16_dinov3", 1024, 24, 16, "ViT-L/16"),
    "dinov3_vith16plus": ("vit_huge_plus_patch16_dinov3", 1280, 32, 20, "ViT-H+/16"),
    "dinov3_vit7b16": ("vit_7b_patch16_dinov3", 4096, 40, 32, "ViT-7B/16"),
}
# Released NeCo teachers (https://huggingface.co/FunAILab/NeCo, docs/weights.md): official key names.
# `_xr`: register-trained weights used without registers.
_NECO = {  # neco name -> (base backbone, repository folder, file stem): <folder>-architectures/neco_on_<stem>_teacher.ckpt
    "neco_vits14": ("dinov2_vits14", "vit-small/dinov2", "dinov2_vit14"),
    "neco_vits14_reg": ("dinov2_vits14_reg", "vit-small/dinov2", "dinov2r_vit14"),
    "neco_vits14_xr": ("dinov2_vits14_reg", "vit-small/dinov2", "dinov2r_xr_vit14"),
    "neco_vitb14": ("dinov2_vitb14", "vit-base/dinov2", "dinov2_vit14"),
    "neco_vitb14_reg": ("dinov2_vitb14_reg", "vit-base/dinov2", "dinov2r_vit14"),
    "neco_vitb14_xr": ("dinov2_vitb14_reg", "vit-base/dinov2", "dinov2r_xr_vit14"),
    "neco_dino_vits16": ("dino_vits16", "vit-small/dino", "dino_vit16"),
}


def _dinov2(name: str, patch: int, dim: int, depth: int, heads: int, reg: int, **kw: Any) -> BackboneConfig:
    """A DINOv2-family config; the register count decides the official interpolation."""
    interpolation = {"interpolate_offset": 0.0 if reg else 0.1, "interpolate_antialias": bool(reg)}
    return BackboneConfig(name, "dinov2", patch, dim, depth, heads, reg, **interpolation, **kw)


def _table() -> dict[str, BackboneConfig]:
    """Every registered config, derived from the size tables above."""
    out: dict[str, BackboneConfig] = {}
    for letter, (size, dim, depth, heads) in _SIZES.items():
        for reg in (0, 4):
            name, tag = f"dinov2_vit{letter}14{'_reg' if reg else ''}", "_reg4" if reg else ""
            url = f"{_FB}/dinov2/dinov2_vit{letter}14/dinov2_vit{letter}14{tag}_pretrain.pth"
            out[name] = _dinov2(name, 14, dim, depth, heads, reg, ffn="swiglu" if letter == "g" else "mlp")
            out[name] = replace(
                out[name],
                weights=WeightSource(url.rsplit("/", 1)[1], url=url),
                timm_name=f"vit_{size}_patch14{tag}_dinov2.lvd142m",
                hf_name=f"facebook/dinov2-{'with-registers-' if reg else ''}{size}",
                description=f"DINOv2 ViT-{letter.upper()}/14{' with 4 registers' if reg else ''}",
            )
    for letter, arch in (("s", "deitsmall"), ("b", "vitbase")):
        size, dim, depth, heads = _SIZES[letter]
        for patch in (16, 8):
            name = f"dino_vit{letter}{patch}"
            url = f"{_FB}/dino/dino_{arch}{patch}_pretrain/dino_{arch}{patch}_pretrain.pth"
            out[name] = BackboneConfig(
                name,
                "dino",
                patch,
                dim,
                depth,
                heads,
                layerscale_init=None,
                pos_grid=224 // patch,
                weights=WeightSource(url.rsplit("/", 1)[1], url=url),
                timm_name=f"vit_{size}_patch{patch}_224.dino",
                hf_name=f"facebook/dino-vit{letter}{patch}",
                description=f"DINO (v1) ViT-{letter.upper()}/{patch}",
            )
    for name, (timm_name, dim, depth, heads, label) in _DINOV3.items():
        file = f"{name}_pretrain_lvd1689m*.pth"
        gated = (
            f"the official DINOv3 file {file} (gated: accept the DINOv3 license at {_DINOV3_LICENSE} to "
            "receive the download URL; weights under Meta's DINOv3 license)"
        )
        description = f"DINOv3 {label} (LVD-1689M, 4 registers, RoPE; via timm)"
        out[name] = BackboneConfig(
            name, "dinov3", 16, dim, depth, heads, 4, pos_grid=0, description=description
        )
        out[name] = replace(
            out[name], timm_name=f"{timm_name}.lvd1689m", weights=WeightSource(file, gated=gated)
        )
    for reg, name in ((0, "vit_tiny"), (4, "vit_tiny_reg")):
        description = f"tiny DINOv2-style ViT for tests and demos{' (4 registers)' if reg else ''}"
        out[name] = _dinov2(name, 8, 192, 4, 3, reg, pos_grid=28, description=description)
    out["vit_tiny_scenes"] = replace(
        out["vit_tiny"],
        name="vit_tiny_scenes",
        weights=WeightSource("vit_tiny_scenes.pth", asset="vit_tiny_scenes.pth"),
        description="vit_tiny pretrained at image level on synthetic scenes (`neco pretrain-tiny`; the demo's start)",
    )
    for name, (base, folder, stem) in _NECO.items():
        path = f"{folder}-architectures/neco_on_{stem}_teacher.ckpt"
        xr = {"num_register_tokens": 0} if name.endswith("_xr") else {}
        weights = WeightSource(path.rsplit("/", 1)[1], hf_repo="FunAILab/NeCo", hf_filename=path)
        xr_note = " used without registers (XR)" if xr else ""
        description = f"NeCo post-trained {out[base].description} (teacher){xr_note}"
        out[name] = replace(
            out[base], name=name, timm_name=None, hf_name=None, weights=weights, description=description, **xr
        )
    return out


_REGISTRY = _table()
