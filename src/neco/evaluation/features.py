"""What every protocol reads from a backbone: patch-feature grids, last-block attention, identity.

`Features` wraps a frozen backbone (or, in tests, any function of images) behind one interface:
`features(images (B, 3, H, W)) -> (B, D, H/p, W/p)` float32 patch grids (final-LayerNorm patch
tokens, no CLS or registers), `features.attention(images) -> (B, heads, T, T)` and the shape
attributes the protocols need. `load_backbone` builds a backbone from a registry name or a
checkpoint file and `backbone_identity` names it (with a checksum of its weights) in result files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from neco.backbones.grid import patch_grid
from neco.utils.precision import autocast

__all__ = [
    "Features",
    "load_backbone",
    "backbone_identity",
    "canonical_tensors",
    "resolve_backbone",
    "state_dict_checksum",
]

ImagesFn = Callable[[torch.Tensor], torch.Tensor]


class Features:
    """Patch grids and attention of a frozen backbone, computed without gradients under `precision` autocast.

    Args:
        grid_fn: images (B, 3, H, W) on `device` -> patch grids (B, D, H/p, W/p).
        patch_size: pixels per patch side.
        attention_fn: images -> last-block attention (B, heads, T, T), or None when not available.
        num_register_tokens: register tokens between CLS and the patches (excluded from attention masks).
        device: where the images are sent.
        precision: fp32, bf16 or fp16 autocast.
        name: shown in error messages.
    """

    def __init__(
        self,
        grid_fn: ImagesFn,
        patch_size: int,
        *,
        attention_fn: ImagesFn | None = None,
        num_register_tokens: int = 0,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        name: str = "features",
    ) -> None:
        if int(patch_size) < 1:
            raise ValueError(f"`patch_size` must be >= 1 but is {patch_size}")
        if int(num_register_tokens) < 0:
            raise ValueError(f"`num_register_tokens` must be >= 0 but is {num_register_tokens}")
        autocast(device, precision)  # validates the precision name
        self.grid_fn, self.attention_fn = grid_fn, attention_fn
        self.patch_size, self.num_register_tokens = int(patch_size), int(num_register_tokens)
        self.device, self.precision, self.name = torch.device(device), precision, name
        self.model: torch.nn.Module | None = None

    @classmethod
    def of_model(
        cls, model: torch.nn.Module, device: torch.device | str = "cpu", precision: str = "fp32"
    ) -> Features:
        """Features of a neco backbone (anything with `forward_features`, `patch_size`), moved to `device`."""
        model = model.to(device).eval()
        features = cls(
            lambda images: patch_grid(model, images),
            int(model.patch_size),
            attention_fn=getattr(model, "get_last_self_attention", None),
            num_register_tokens=int(getattr(model, "num_register_tokens", 0)),
            device=device,
            precision=precision,
            name=str(getattr(getattr(model, "config", None), "name", type(model).__name__)),
        )
        features.model = model  # the module itself, for the protocols that train it (finetune)
        return features

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Patch grids (B, D, H/p, W/p) float32 of normalised images (B, 3, H, W)."""
        return self._forward(self.grid_fn, images).float()

    def require_attention(self) -> None:
        """Raise a ValueError naming the backbone when it exposes no last-block attention."""
        if self.attention_fn is None:
            raise ValueError(
                f"backbone {self.name} exposes no last-block attention (get_last_self_attention): "
                "the attention-based protocols (attention, unsupervised) cannot run on it"
            )

    def attention(self, images: torch.Tensor) -> torch.Tensor:
        """Last-block attention probabilities (B, heads, T, T) float32 on the CPU; tokens [CLS, registers, patches]."""
        self.require_attention()
        return self._forward(self.attention_fn, images).float().cpu()

    @torch.no_grad()
    def _forward(self, fn: ImagesFn, images: torch.Tensor) -> torch.Tensor:
        """`fn` of the images sent to the device, without gradients, under the `precision` autocast."""
        with autocast(self.device, self.precision):
            return fn(images.to(self.device, non_blocking=True))


def canonical_tensors(model: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors that define a ViT backbone's features, in one layout whatever file it came from.

    Official key names (timm / HF exports converted back), without `mask_token` (training-only, absent
    from timm exports) and, for register models, with the CLS position row folded into the CLS token as
    timm stores it (the features see only their sum). State dicts that are not a ViT backbone are
    returned as they are.
    """
    from neco.backbones.formats import convert, detect_format, is_head_key, strip_prefixes

    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if getattr(getattr(model, "config", None), "built_by_timm", False):
        return tensors  # a timm-built backbone has one layout: timm's own
    try:
        stripped = strip_prefixes(tensors)
        if any(is_head_key(k) for k in stripped):
            return tensors
        official = convert(stripped, to="official", source=detect_format(stripped))
    except ValueError:
        return tensors
    official.pop("mask_token", None)
    if {"register_tokens", "cls_token", "pos_embed"} <= official.keys():
        official["cls_token"] = official["cls_token"] + official["pos_embed"][:, :1]
        official["pos_embed"] = official["pos_embed"][:, 1:]
    return official


def state_dict_checksum(model: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted (name, dtype, shape, bytes) of the backbone's canonical tensors.

    The same network loaded from an official, timm or Hugging Face file gets the same checksum (see
    `canonical_tensors`); any other module or state dict is hashed as it is.
    """
    state = canonical_tensors(model)
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
        # view as bytes so every dtype (bf16 included) hashes its exact bit pattern
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def backbone_identity(model: torch.nn.Module, name: str, weights: str | Path | None) -> dict[str, Any]:
    """Name, resolved weights file, checksum and shape attributes of a backbone, for a result file."""
    return {
        "name": name,
        "weights": None if weights is None else str(Path(weights).resolve()),
        "sha256": state_dict_checksum(model),
        "patch_size": int(getattr(model, "patch_size", 0)) or None,
        "embed_dim": int(getattr(model, "embed_dim", 0)) or None,
        "num_register_tokens": int(getattr(model, "num_register_tokens", 0)),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
    }


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def resolve_backbone(
    spec: str, weights: str | Path | None = None, *, random_init: bool = False
) -> tuple[str, str | Path | None]:
    """(registry name, weights file) of `--backbone SPEC [--weights FILE]`; a neco checkpoint file names both.

    `random_init` (`--random-init`) contradicts any weights file and is refused with one.
    """
    from neco.backbones.weights import read_checkpoint

    path, name, resolved = Path(spec), spec, weights
    if weights is None and (path.suffix in CHECKPOINT_SUFFIXES or path.is_file()):
        if not path.is_file():
            raise FileNotFoundError(f"--backbone {spec}: checkpoint file not found")
        checkpoint = read_checkpoint(path, mmap=True)  # only its `format` and `backbone` entries are read
        if not (isinstance(checkpoint, dict) and checkpoint.get("format") == "neco-checkpoint"):
            raise ValueError(
                f"--backbone {spec}: a file must be a neco checkpoint (format 'neco-checkpoint'); "
                "for other weight files pass --backbone NAME --weights FILE"
            )
        name, resolved = str(checkpoint["backbone"]), path
    elif weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: file not found")
    if random_init and resolved is not None:
        given = f"--weights {weights}" if weights is not None else f"--backbone {spec}"
        raise ValueError(f"`--random-init` and `{given}` contradict each other: give one of them")
    return name, resolved


def load_backbone(
    spec: str, *, weights: str | Path | None = None, pretrained: bool = True, which: str = "teacher"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build a backbone from a registry name, or from a neco checkpoint file given as `spec`.

    Returns the model in eval mode and its identity (name, weights file, sha256) for result files.
    With `weights` the file is loaded through `neco.backbones.create(name, weights=...)`, which reads
    every supported format (a neco checkpoint gives its teacher unless `which="student"`).
    """
    from neco import backbones

    name, weights = resolve_backbone(spec, weights, random_init=not pretrained)
    try:
        model = backbones.create(
            name, pretrained=pretrained and weights is None, weights=weights, which=which
        ).eval()
    except ValueError as err:
        if "has no pretrained weights" not in str(err):
            raise
        raise ValueError(f"{err}; pass --weights FILE, or --random-init for an untrained baseline") from err
    return model, {**backbone_identity(model, name, weights), "which": which}
