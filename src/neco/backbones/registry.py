"""The backbone registry: one frozen config per name (architecture, interpolation, weight source)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneConfig",
    "WeightSource",
    "TIMM_FAMILIES",
    "TIMM_PREFIX",
    "get_config",
    "list_backbones",
    "register",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{size}14/dinov2_vit{size}14{reg}_pretrain.pth"
_DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_{arch}{patch}_pretrain/dino_{arch}{patch}_pretrain.pth"
_NECO_REPO = "FunAILab/NeCo"


@dataclass(frozen=True)
class WeightSource:
    """Where pretrained weights come from: a direct URL or a file of a Hugging Face hub repository."""

    filename: str
    url: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    asset: str | None = None  # a file shipped inside the package (`neco/assets/<asset>`)
    # Gated files (DINOv3): never downloaded; `gated` says where a user obtains them, and any cached
    # file matching `filename` with a glob (`*` stands for the release hash) is used.
    gated: str | None = None

    def download_url(self) -> str:
        """The plain HTTPS address of the file (for `hf_repo` sources, the hub's resolve URL)."""
        if self.asset is not None:
            return f"package file neco/assets/{self.asset}"
        if self.gated is not None:
            return self.gated
        if self.url is not None:
            return self.url
        return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.hf_filename}"


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture and weight source of one registered backbone (frozen; use `replace` to change)."""

    name: str
    # "dinov2" (LayerScale, mask token), "dino" (DINO v1: neither), "dinov3" (timm's Eva with RoPE),
    # "timm" (any timm ViT, `timm:<model name>`); the last two are built by timm (`neco.backbones.timm_vit`).
    family: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    num_register_tokens: int = 0
    mlp_ratio: float = 4.0
    ffn: str = "mlp"  # "mlp" (fc1-GELU-fc2) or "swiglu" (w12/w3, ViT-g)
    layerscale_init: float | None = 1.0  # None: no LayerScale (DINO v1)
    mask_token: bool = True
    # Position-embedding interpolation, exactly as the official code: register models interpolate
    # to the exact grid with antialias; the others use scale_factor (grid + 0.1) / M, no antialias.
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    pos_grid: int = 37  # M: the pretrained position-embedding grid is M x M
    img_size: int = 518  # the pretraining resolution (pos_grid * patch_size)
    drop_path_rate: float = 0.0
    weights: WeightSource | None = None
    timm_name: str | None = None
    hf_name: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""
    # Extra keyword arguments of `timm.create_model` (timm families), as sorted (key, value) pairs.
    timm_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def built_by_timm(self) -> bool:
        """True for the families whose model is a timm model wrapped by `neco.backbones.timm_vit`."""
        return self.family in TIMM_FAMILIES

    def with_overrides(self, **overrides: Any) -> BackboneConfig:
        """Return a copy with some fields replaced; unknown fields raise a ValueError listing the valid ones."""
        valid = {f.name for f in fields(self)} - {"name", "family"}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"backbone overrides {unknown} are unknown; valid overrides: {sorted(valid)}")
        return replace(self, **overrides)


_REGISTRY: dict[str, BackboneConfig] = {}
TIMM_FAMILIES = ("dinov3", "timm")
TIMM_PREFIX = "timm:"


def register(config: BackboneConfig) -> BackboneConfig:
    """Add `config` to the registry under `config.name` (names are unique)."""
    if config.name in _REGISTRY:
        raise ValueError(f"backbone name {config.name!r} is already registered")
    _REGISTRY[config.name] = config
    return config


def list_backbones() -> list[str]:
    """All registered backbone names, sorted (any timm ViT is also accepted as `timm:<model name>`)."""
    return sorted(_REGISTRY)


def get_config(name: str) -> BackboneConfig:
    """The config registered under `name`, or built for `timm:<model name>`; a ValueError otherwise."""
    if name.startswith(TIMM_PREFIX):
        from neco.backbones.model import timm_config

        return timm_config(name)
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list_backbones(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown backbone {name!r} (`--backbone` / `model.backbone`): {hint}it must be one of "
            f"{list_backbones()} (`neco backbones` lists them) or `timm:<timm model name>`"
        )
    return _REGISTRY[name]


_SIZES = {
    # letter: (embed_dim, depth, heads, ffn, mlp_ratio)
    "s": (384, 12, 6, "mlp", 4.0),
    "b": (768, 12, 12, "mlp", 4.0),
    "l": (1024, 24, 16, "mlp", 4.0),
    "g": (1536, 40, 24, "swiglu", 4.0),
}
_HF_SIZES = {"s": "small", "b": "base", "l": "large", "g": "giant"}
_TIMM_SIZES = {"s": "small", "b": "base", "l": "large", "g": "giant"}


def _register_dinov2() -> None:
    for letter, (dim, depth, heads, ffn, ratio) in _SIZES.items():
        for reg in (False, True):
            suffix = "_reg" if reg else ""
            url = _DINOV2_URL.format(size=letter, reg="_reg4" if reg else "")
            register(
                BackboneConfig(
                    name=f"dinov2_vit{letter}14{suffix}",
                    family="dinov2",
                    patch_size=14,
                    embed_dim=dim,
                    depth=depth,
                    num_heads=heads,
                    num_register_tokens=4 if reg else 0,
                    mlp_ratio=ratio,
                    ffn=ffn,
                    interpolate_offset=0.0 if reg else 0.1,
                    interpolate_antialias=reg,
                    weights=WeightSource(filename=url.rsplit("/", 1)[1], url=url),
                    timm_name=f"vit_{_TIMM_SIZES[letter]}_patch14{'_reg4' if reg else ''}_dinov2.lvd142m",
                    hf_name=f"facebook/dinov2-{'with-registers-' if reg else ''}{_HF_SIZES[letter]}",
                    description=f"DINOv2 ViT-{letter.upper()}/14{' with 4 registers' if reg else ''}",
                )
            )


def _register_dino() -> None:
    arch_names = {"s": "deitsmall", "b": "vitbase"}
    for letter in ("s", "b"):
        dim, depth, heads, _, _ = _SIZES[letter]
        for patch in (16, 8):
            url = _DINO_URL.format(arch=arch_names[letter], patch=patch)
            register(
                BackboneConfig(
                    name=f"dino_vit{letter}{patch}",
                    family="dino",
                    patch_size=patch,
                    embed_dim=dim,
                    depth=depth,
                    num_heads=heads,
                    layerscale_init=None,
                    mask_token=False,
                    pos_grid=224 // patch,
                    img_size=224,
                    weights=WeightSource(filename=url.rsplit("/", 1)[1], url=url),
                    timm_name=f"vit_{_TIMM_SIZES[letter]}_patch{patch}_224.dino",
                    hf_name=f"facebook/dino-vit{letter}{patch}",
                    description=f"DINO (v1) ViT-{letter.upper()}/{patch}",
                )
            )


def _register_tiny() -> None:
    for reg in (False, True):
        register(
            BackboneConfig(
                name="vit_tiny_reg" if reg else "vit_tiny",
                family="dinov2",
                patch_size=8,
                embed_dim=192,
                depth=4,
                num_heads=3,
                num_register_tokens=4 if reg else 0,
                interpolate_offset=0.0 if reg else 0.1,
                interpolate_antialias=reg,
                pos_grid=28,
                img_size=224,
                description=f"tiny DINOv2-style ViT for tests and demos{' (4 registers)' if reg else ''}",
            )
        )
    register(
        replace(
            get_config("vit_tiny"),
            name="vit_tiny_scenes",
            weights=WeightSource(filename="vit_tiny_scenes.pth", asset="vit_tiny_scenes.pth"),
            description="vit_tiny pretrained at image level on synthetic scenes (`neco pretrain-tiny`; the demo's start)",
        )
    )


def _register_neco() -> None:
    # Released NeCo teachers (https://huggingface.co/FunAILab/NeCo, see docs/weights.md). They are
    # plain backbone state dicts in the official DINOv2 / DINO key names.
    releases = {
        "neco_vits14": (
            "dinov2_vits14",
            "vit-small/dinov2-architectures/neco_on_dinov2_vit14_teacher.ckpt",
            {},
        ),
        "neco_vits14_reg": (
            "dinov2_vits14_reg",
            "vit-small/dinov2-architectures/neco_on_dinov2r_vit14_teacher.ckpt",
            {},
        ),
        "neco_vits14_xr": (
            "dinov2_vits14_reg",
            "vit-small/dinov2-architectures/neco_on_dinov2r_xr_vit14_teacher.ckpt",
            {"num_register_tokens": 0},
        ),
        "neco_vitb14": (
            "dinov2_vitb14",
            "vit-base/dinov2-architectures/neco_on_dinov2_vit14_teacher.ckpt",
            {},
        ),
        "neco_vitb14_reg": (
            "dinov2_vitb14_reg",
            "vit-base/dinov2-architectures/neco_on_dinov2r_vit14_teacher.ckpt",
            {},
        ),
        "neco_vitb14_xr": (
            "dinov2_vitb14_reg",
            "vit-base/dinov2-architectures/neco_on_dinov2r_xr_vit14_teacher.ckpt",
            {"num_register_tokens": 0},
        ),
        "neco_dino_vits16": (
            "dino_vits16",
            "vit-small/dino-architectures/neco_on_dino_vit16_teacher.ckpt",
            {},
        ),
    }
    for name, (base, path, changes) in releases.items():
        base_config = _REGISTRY[base]
        register(
            replace(
                base_config,
                name=name,
                weights=WeightSource(filename=path.rsplit("/", 1)[1], hf_repo=_NECO_REPO, hf_filename=path),
                timm_name=None,
                hf_name=None,
                description=f"NeCo post-trained {base_config.description} (teacher)"
                + (" used without registers (XR)" if changes else ""),
                **changes,
            )
        )


_DINOV3_LICENSE = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
_DINOV3 = {
    # neco name: (timm model, Meta file stem, embed_dim, depth, heads, label)
    "dinov3_vits16": ("vit_small_patch16_dinov3", "dinov3_vits16", 384, 12, 6, "ViT-S/16"),
    "dinov3_vits16plus": ("vit_small_plus_patch16_dinov3", "dinov3_vits16plus", 384, 12, 6, "ViT-S+/16"),
    "dinov3_vitb16": ("vit_base_patch16_dinov3", "dinov3_vitb16", 768, 12, 12, "ViT-B/16"),
    "dinov3_vitl16": ("vit_large_patch16_dinov3", "dinov3_vitl16", 1024, 24, 16, "ViT-L/16"),
    "dinov3_vith16plus": ("vit_huge_plus_patch16_dinov3", "dinov3_vith16plus", 1280, 32, 20, "ViT-H+/16"),
    "dinov3_vit7b16": ("vit_7b_patch16_dinov3", "dinov3_vit7b16", 4096, 40, 32, "ViT-7B/16"),
}


def _register_dinov3() -> None:
    # Built by timm's Eva (RoPE, 4 registers = Meta's `storage_tokens`). The weights are gated: the
    # user accepts the DINOv3 license, downloads the file and passes it (or puts it in the cache).
    for name, (timm_name, stem, dim, depth, heads, label) in _DINOV3.items():
        filename = f"{stem}_pretrain_lvd1689m*.pth"
        register(
            BackboneConfig(
                name=name,
                family="dinov3",
                patch_size=16,
                embed_dim=dim,
                depth=depth,
                num_heads=heads,
                num_register_tokens=4,
                pos_grid=0,  # RoPE: no position-embedding table
                img_size=256,
                weights=WeightSource(
                    filename=filename,
                    gated=(
                        f"the official DINOv3 file {filename} (gated: accept the DINOv3 license at "
                        f"{_DINOV3_LICENSE} to receive the download URL; weights under Meta's DINOv3 license)"
                    ),
                ),
                timm_name=f"{timm_name}.lvd1689m",
                hf_name=None,  # transformers' DINOv3 files (`facebook/dinov3-*`) are not read: Meta or timm files
                description=f"DINOv3 {label} (LVD-1689M, 4 registers, RoPE; via timm)",
            )
        )


_register_dinov2()
_register_dino()
_register_dinov3()
_register_tiny()
_register_neco()
