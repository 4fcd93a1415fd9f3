"""`create(name, pretrained=..., weights=...)`: build a registered backbone and load its weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neco.backbones.checkpoint import recorded_register_tokens
from neco.backbones.download import download_weights, weight_source
from neco.backbones.model import Backbone
from neco.backbones.registry import get_config
from neco.backbones.weights import load_weights

__all__ = ["create"]


def create(
    name: str,
    *,
    pretrained: bool | str = False,
    weights: str | Path | Mapping[str, Any] | None = None,
    which: str = "teacher",
    progress: bool = True,
    **overrides: Any,
) -> Backbone:
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
    model = Backbone(config, init=weights is None and not pretrained)
    if weights is not None:
        load_weights(model, weights, which=which)
    elif pretrained:
        source = weight_source(config, "official" if pretrained is True else str(pretrained))
        load_weights(model, download_weights(source, progress=progress), which=which)
    return model
