"""Backbones for evaluation: load by registry name or checkpoint file, and wrap as a feature function."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_backbone", "model_features_fn", "FeaturesFn"]

FeaturesFn = Callable[[torch.Tensor], torch.Tensor]

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_backbone(
    spec: str, *, weights: str | Path | None = None, pretrained: bool = True, which: str = "teacher"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build a backbone from a registry name, or from a neco checkpoint file given as `spec`.

    Returns the model in eval mode and its identity (name, weights file, sha256) for result files.
    With `weights` the file is loaded through `neco.backbones.create(name, weights=...)`, which reads
    every supported format (a neco checkpoint gives its teacher).
    """
    from neco import backbones
    from neco.evaluation.results import backbone_identity

    name = spec
    path = Path(spec)
    if weights is None and path.suffix in {".pt", ".pth", ".ckpt", ".safetensors"}:
        if not path.is_file():
            raise FileNotFoundError(f"--backbone {spec}: checkpoint file not found")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not (isinstance(checkpoint, dict) and checkpoint.get("format") == "neco-checkpoint"):
            raise ValueError(
                f"--backbone {spec}: a file must be a neco checkpoint (format 'neco-checkpoint'); "
                "for other weight files pass --backbone NAME --weights FILE"
            )
        name, weights = str(checkpoint["backbone"]), path
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: file not found")
    try:
        model = backbones.create(name, pretrained=pretrained and weights is None, weights=weights, which=which)
    except ValueError as err:
        if "has no pretrained weights" not in str(err):
            raise
        raise ValueError(f"{err}; pass --weights FILE, or --random-init for an untrained baseline") from err
    model.eval()
    return model, backbone_identity(model, name, weights)


def model_features_fn(
    model: torch.nn.Module, device: torch.device | str = "cpu", precision: str = "fp32"
) -> FeaturesFn:
    """A feature function images (B,3,H,W) -> final-LayerNorm patch tokens (B, D, H//p, W//p) float32."""
    if precision not in _PRECISIONS:
        raise ValueError(f"`precision` must be one of {sorted(_PRECISIONS)} but is {precision!r}")
    device = torch.device(device)
    model = model.to(device).eval()
    patch = int(model.patch_size)
    dtype = _PRECISIONS[precision]

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        h, w = images.shape[-2] // patch, images.shape[-1] // patch
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            tokens = model.forward_features(images)["x_norm_patchtokens"]  # (B, h*w, D)
        return tokens.float().transpose(1, 2).reshape(tokens.shape[0], -1, h, w)  # (B, D, h, w)

    return features
