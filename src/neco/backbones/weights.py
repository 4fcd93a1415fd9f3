"""One strict loader for every backbone checkpoint format neco knows (see docs/weights.md).

Reading a checkpoint is three steps: unwrap the container (neco checkpoint, Lightning checkpoint,
DINO v1 training checkpoint, plain state dict), pick the teacher or the student, then convert the
backbone keys to the official DINOv2 names. Loading is strict: only `mask_token` may be missing and
only head keys may be left over; anything else is an error naming the keys and the guessed format.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neco.backbones.checkpoint import WHICH, check_tensors_finite, extract_state_dict, read_checkpoint
from neco.backbones.formats import convert, detect_format, is_head_key, strip_prefixes
from neco.utils.logging import get_logger

__all__ = [
    "WHICH",
    "WeightsInfo",
    "extract_state_dict",
    "load_weights",
    "read_backbone_tensors",
    "read_checkpoint",
    "read_state_dict",
]

_SHOWN = 12

StateDict = dict[str, torch.Tensor]


@dataclass
class WeightsInfo:
    """What the loader found: container kind, which network, key format, and the keys it dropped."""

    source: str
    container: str
    which: str | None
    format: str
    dropped_head_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    backbone: str | None = None
    num_register_tokens: int | None = None

    def describe(self) -> str:
        """One line for logs: "<source>: <container>, teacher, official keys, 12 head keys dropped"."""
        parts = [self.container]
        if self.which:
            parts.append(self.which)
        parts.append(f"{self.format} keys")
        if self.dropped_head_keys:
            parts.append(f"{len(self.dropped_head_keys)} head keys dropped")
        parts.extend(self.notes)
        return f"{self.source}: " + ", ".join(parts)


def read_backbone_tensors(
    source: str | Path | Mapping[str, Any], *, which: str = "teacher"
) -> tuple[StateDict, WeightsInfo]:
    """Read any checkpoint and return its backbone tensors in their own key names (prefixes, heads dropped).

    `info.format` is "unknown" until a converter names it.
    """
    if isinstance(source, Mapping):
        obj, name = source, "state dict"
    else:
        obj, name = read_checkpoint(source), str(source)
    tensors, meta = extract_state_dict(obj, which)
    tensors = strip_prefixes(tensors)
    heads = sorted(k for k in tensors if is_head_key(k))
    backbone = {k: v for k, v in tensors.items() if not is_head_key(k)}
    # a diverged run's weights would load, export and evaluate into NaN results: refused here, once
    check_tensors_finite(backbone, name, "weights file" if name != "state dict" else "weights")
    info = WeightsInfo(
        source=name,
        container=meta["container"],
        which=meta["which"],
        format="unknown",
        dropped_head_keys=heads,
        backbone=meta.get("backbone"),
        num_register_tokens=meta.get("num_register_tokens"),
    )
    return backbone, info


def read_state_dict(
    source: str | Path | Mapping[str, Any], *, which: str = "teacher"
) -> tuple[StateDict, WeightsInfo]:
    """Read any supported checkpoint and return its backbone in official DINOv2 names, heads dropped."""
    backbone, info = read_backbone_tensors(source, which=which)
    info.format = detect_format(backbone)
    return convert(backbone, to="official", source=info.format), info


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > _SHOWN else ''}]"


def load_weights(
    model: nn.Module, source: str | Path | Mapping[str, Any], *, which: str = "teacher"
) -> WeightsInfo:
    """Load a checkpoint of any supported format into a neco backbone (`neco.backbones.create`), strictly.

    Args:
        model: the backbone (from `neco.backbones.create`).
        source: a file path, or an already loaded checkpoint / state dict.
        which: "teacher" (default; the better model) or "student", for checkpoints holding both.

    Raises:
        ValueError: when keys are missing, unexpected (other than head keys) or of the wrong shape;
            the message names them and the guessed format.
    """
    from neco.backbones.timm_weights import to_timm_state

    backbone, info = read_backbone_tensors(source, which=which)
    name = model.config.name
    if info.backbone is not None and info.backbone != name:
        info.notes.append(f"checkpoint trained as {info.backbone!r}")
    if model.config.built_by_timm:
        state, info.format = to_timm_state(backbone, model.model, name)
    else:
        state = _official_vit_state(backbone, model, info)
    _check_keys(
        model.model.state_dict(),
        state,
        f"{info.source} (guessed: {info.container}, {info.format} keys)",
        name,
    )
    model.model.load_state_dict(state, strict=True)
    get_logger("neco.backbones").info(f"loaded {name} from {info.describe()}")
    return info


def _official_vit_state(backbone: StateDict, model: nn.Module, info: WeightsInfo) -> StateDict:
    """Official / timm / HF DINOv2-family tensors in the names of `model.model`, converted by timm's filter."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    info.format = detect_format(backbone)
    official = convert(backbone, to="official", source=info.format)
    if (
        "register_tokens" in official
        and model.num_register_tokens == 0
        and model.config.interpolate_antialias
    ):
        # "XR": register-trained weights deliberately used without registers (NeCo DINOv2R-XR).
        del official["register_tokens"]
        info.notes.append("register tokens unused (model built with 0 registers)")
    registers = official["register_tokens"].shape[1] if "register_tokens" in official else 0
    if registers != model.num_register_tokens:
        raise ValueError(
            f"cannot load {info.source} (guessed: {info.container}, {info.format} keys) into "
            f"{model.config.name}: the weights hold {registers} register tokens (`register_tokens`) but the "
            f"model has {model.num_register_tokens}; check the backbone name (registers, size, patch) matches"
        )
    pos, vit = official.get("pos_embed"), model.model
    side = math.isqrt(pos.shape[1] - 1) if pos is not None else 0
    if side and side * side == pos.shape[1] - 1 and side != vit.patch_embed.grid_size[0]:
        vit.set_pos_grid(side)  # the model interpolates at run time from the grid it was trained with
        info.notes.append(f"position-embedding grid {side}x{side}")
    # timm's filter recognises official DINOv2 names by `mask_token` (and drops it); DINO v1 files lack it
    official.setdefault("mask_token", torch.zeros(1, vit.embed_dim))
    return checkpoint_filter_fn(official, vit)


def _check_keys(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    what: str,
    name: str,
) -> None:
    """Refuse missing, unexpected and misshaped keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing keys {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_listing(unexpected)}")
        if wrong_shape:
            problems.append(f"shape mismatches {_listing(wrong_shape)}")
        raise ValueError(
            f"cannot load {what} into {name}: " + "; ".join(problems) + ". "
            "Only head keys may be unexpected (nothing may be missing); "
            "check the backbone name (registers, size, patch) matches the checkpoint"
        )
