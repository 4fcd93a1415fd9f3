"""`create(name, pretrained=..., weights=...)`: build a registered backbone and load its weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neco.backbones.download import download_weights, weight_source
from neco.backbones.registry import get_config
from neco.backbones.timm_vit import TimmViT
from neco.backbones.vit import VisionTransformer
from neco.backbones.weights import load_weights, read_checkpoint

__all__ = ["create", "recorded_register_tokens"]


def recorded_register_tokens(weights: str | Path | Mapping[str, Any]) -> int | None:
    """The register-token count a neco or Lightning training checkpoint records; None for other files."""
    if isinstance(weights, Mapping):
        obj: Any = weights
    elif Path(weights).suffix == ".safetensors":
        return None  # a plain tensor file records nothing
    else:
        try:  # memory-mapped: the top-level entries are read, the tensors are not
            obj = read_checkpoint(weights, mmap=True)
        except (OSError, ValueError):  # not a readable checkpoint: `load_weights` reports it, naming the file
            return None
    value = obj.get("num_register_tokens") if isinstance(obj, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def create(
    name: str,
    *,
    pretrained: bool | str = False,
    weights: str | Path | Mapping[str, Any] | None = None,
    which: str = "teacher",
    progress: bool = True,
    **overrides: Any,
) -> VisionTransformer | TimmViT:
    """Build the backbone registered as `name`; load `weights` (a file or state dict) or its pretrained weights.

    Args:
        name: a registry name (`neco.backbones.list_backbones()`), or `timm:<timm model name>[,key=value...]`
            for any timm vision transformer (random init unless `weights` is given).
        pretrained: download (or read from the cache) the registered weights when `weights` is None;
            True or "official" for the registered source, "timm" / "hf" for those hubs' copies.
        weights: a checkpoint of any supported format; wins over `pretrained`.
        which: "teacher" or "student" for checkpoints holding both.
        progress: show a download progress bar.
        **overrides: config fields to change, e.g. `drop_path_rate=0.1`, `num_register_tokens=0`.
    """
    registered = get_config(name)
    if weights is not None and "num_register_tokens" not in overrides and not registered.built_by_timm:
        recorded = recorded_register_tokens(weights)
        if recorded is not None and recorded != registered.num_register_tokens:
            # e.g. an "XR" run: register-trained weights post-trained without registers
            overrides["num_register_tokens"] = recorded
    config = registered.with_overrides(**overrides)
    model_class = TimmViT if config.built_by_timm else VisionTransformer
    model = model_class(config, init=weights is None and not pretrained)
    if weights is not None:
        load_weights(model, weights, which=which)
    elif pretrained:
        source = weight_source(config, "official" if pretrained is True else str(pretrained))
        load_weights(model, download_weights(source, progress=progress), which=which)
    return model
