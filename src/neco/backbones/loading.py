"""Loading a backbone the way every command does: resolve `--backbone` / `--weights`, build, load, name it.

`create(name, pretrained=..., weights=...)` builds a registered backbone and loads its weights with
`load_weights`, one strict loader for every checkpoint format (docs/weights.md): unwrap the container
(`neco.backbones.checkpoint`), pick the teacher or the student, convert the keys (official, timm, HF,
Meta DINOv3) to the model's own with timm's `checkpoint_filter_fn`; only head keys may be left over,
anything else is an error naming the keys and the guessed format.

`resolve_backbone` turns `--backbone NAME|CHECKPOINT|RUN_FOLDER [--weights FILE]` into a registry
name and a weights file; `load_backbone` builds it (teacher or student) in eval mode and returns its
identity for result files: name, resolved file and `state_dict_checksum`, a sha256 that is the same
for one network whichever format (official, timm, Hugging Face) it was read from.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from neco.backbones.checkpoint import (
    CHECKPOINT_FORMAT,
    WeightsInfo,
    check_tensors_finite,
    extract_state_dict,
    key_problems,
    read_checkpoint,
    recorded_register_tokens,
)
from neco.backbones.download import download_weights, weight_source
from neco.backbones.formats import convert, detect_format, is_head_key, strip_prefixes, to_timm_state
from neco.backbones.model import Backbone
from neco.backbones.registry import get_config
from neco.utils.logging import get_logger

__all__ = ["CHECKPOINT_SUFFIXES", "WeightsInfo", "backbone_identity", "canonical_tensors", "create"]
__all__ += ["load_backbone", "load_weights", "read_backbone_tensors", "read_checkpoint", "read_state_dict"]
__all__ += ["resolve_backbone", "state_dict_checksum"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
_RUN_CHECKPOINTS = ("last.ckpt", "checkpoints/last.ckpt")  # a run folder's newest checkpoint

StateDict = dict[str, torch.Tensor]


def canonical_tensors(model: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors that define a ViT backbone's features, in one layout whatever file it came from.

    Official key names (timm / HF files converted back), without `mask_token` (training-only) and, for
    register models, with the CLS position row folded into the CLS token as timm stores it (the features
    see only their sum). timm-built models and state dicts that are not a ViT backbone are kept as they are.
    """
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if getattr(getattr(model, "config", None), "built_by_timm", False):
        return tensors  # a timm-built backbone has one layout: timm's own
    try:  # `convert` refuses head keys and non-ViT dicts: those are hashed as they are
        official = convert(tensors, to="official")
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


def resolve_backbone(
    spec: str, weights: str | Path | None = None, *, random_init: bool = False
) -> tuple[str, str | Path | None]:
    """(registry name, weights file) of `--backbone SPEC [--weights FILE]`.

    SPEC is a registry name, a neco checkpoint file (which names both) or a training run folder (its
    `last.ckpt`). `random_init` (`--random-init`) contradicts any weights file and is refused with one.
    """
    path, name, resolved = Path(spec), spec, weights
    if spec and path.is_dir():
        if (path := next((path / r for r in _RUN_CHECKPOINTS if (path / r).is_file()), None)) is None:
            raise FileNotFoundError(
                f"--backbone {spec} is a folder without a checkpoint: expected a training run folder holding "
                f"{' or '.join(_RUN_CHECKPOINTS)}, or pass a checkpoint file or a registry name"
            )
    if spec and (path.suffix in CHECKPOINT_SUFFIXES or path.is_file()):
        if weights is not None:
            raise ValueError(
                f"--backbone {spec} is a checkpoint, which fixes the backbone and its weights, so "
                f"--weights {weights} cannot apply: pass the checkpoint alone, or --backbone NAME "
                "--weights FILE (`neco backbones` lists the names)"
            )
        if not path.is_file():
            raise FileNotFoundError(f"--backbone {spec}: checkpoint file not found")
        checkpoint = read_checkpoint(path, mmap=True)  # only its `format` and `backbone` entries are read
        if not (isinstance(checkpoint, dict) and checkpoint.get("format") == CHECKPOINT_FORMAT):
            raise ValueError(
                f"--backbone {spec}: a file must be a neco checkpoint (format {CHECKPOINT_FORMAT!r}); "
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
    """Build a backbone from a registry name, a neco checkpoint file or a run folder given as `spec`.

    Returns the model in eval mode and its identity (name, weights file, sha256) for result files.
    A neco checkpoint gives its teacher unless `which="student"`.
    """
    name, weights = resolve_backbone(spec, weights, random_init=not pretrained)
    model = create(name, pretrained=pretrained and weights is None, weights=weights, which=which).eval()
    return model, {**backbone_identity(model, name, weights), "which": which}


def read_backbone_tensors(
    source: str | Path | Mapping[str, Any], *, which: str = "teacher"
) -> tuple[StateDict, WeightsInfo]:
    """Read any checkpoint and return its backbone tensors in their own key names (prefixes, heads dropped).

    `info.format` is "unknown" until a converter names it.
    """
    name = "state dict" if isinstance(source, Mapping) else str(source)
    obj = source if isinstance(source, Mapping) else read_checkpoint(source)
    tensors, info = extract_state_dict(obj, which, name)
    tensors = strip_prefixes(tensors)
    backbone = {k: v for k, v in tensors.items() if not is_head_key(k)}
    # a diverged run's weights would load, export and evaluate into NaN results: refused here, once
    check_tensors_finite(backbone, name, "weights file" if name != "state dict" else "weights")
    info.dropped_head_keys = sorted(set(tensors) - set(backbone))
    return backbone, info


def read_state_dict(
    source: str | Path | Mapping[str, Any], *, which: str = "teacher"
) -> tuple[StateDict, WeightsInfo]:
    """Read any supported checkpoint and return its backbone in official DINOv2 names, heads dropped."""
    backbone, info = read_backbone_tensors(source, which=which)
    info.format = detect_format(backbone)
    return convert(backbone, to="official", source=info.format), info


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
    name = model.config.name
    if model.config.built_by_timm:
        backbone, info = read_backbone_tensors(source, which=which)
        state, info.format = to_timm_state(backbone, model.model, name)
    else:
        official, info = read_state_dict(source, which=which)
        state = _official_vit_state(official, model, info)
    if info.backbone is not None and info.backbone != name:
        info.notes.insert(0, f"checkpoint trained as {info.backbone!r}")
    if problems := key_problems(model.model.state_dict(), state):
        raise ValueError(
            f"cannot load {info.source} (guessed: {info.container}, {info.format} keys) into {name}: {problems}. "
            "Only head keys may be unexpected (nothing may be missing); "
            "check the backbone name (registers, size, patch) matches the checkpoint"
        )
    model.model.load_state_dict(state, strict=True)
    get_logger("neco.backbones").info(f"loaded {name} from {info.describe()}")
    return info


def _official_vit_state(official: StateDict, model: Backbone, info: WeightsInfo) -> StateDict:
    """Official DINOv2-family tensors in the names of `model.model`, converted by timm's filter."""
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
    if weights is None and pretrained:
        weights = download_weights(
            weight_source(config, "official" if pretrained is True else str(pretrained)), progress=progress
        )
    if weights is not None:
        load_weights(model, weights, which=which)
    return model
