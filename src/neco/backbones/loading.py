"""Loading a backbone the way every command does: resolve `--backbone` / `--weights`, build, name it.

`resolve_backbone` turns `--backbone NAME|CHECKPOINT|RUN_FOLDER [--weights FILE]` into a registry
name and a weights file; `load_backbone` builds it (teacher or student) in eval mode and returns its
identity for result files: name, resolved file and `state_dict_checksum`, a sha256 that is the same
for one network whichever format (official, timm, Hugging Face) it was read from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from neco.backbones.checkpoint import CHECKPOINT_FORMAT, read_checkpoint

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "backbone_identity",
    "canonical_tensors",
    "load_backbone",
    "resolve_backbone",
    "state_dict_checksum",
]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
_RUN_CHECKPOINTS = ("last.ckpt", "checkpoints/last.ckpt")  # a run folder's newest checkpoint


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


def _run_checkpoint(spec: str, folder: Path) -> Path:
    """The `last.ckpt` of a run folder given as `--backbone`; a FileNotFoundError naming where it looked."""
    for relative in _RUN_CHECKPOINTS:
        if (folder / relative).is_file():
            return folder / relative
    raise FileNotFoundError(
        f"--backbone {spec} is a folder without a checkpoint: expected a training run folder holding "
        f"{' or '.join(_RUN_CHECKPOINTS)}, or pass a checkpoint file or a registry name"
    )


def resolve_backbone(
    spec: str, weights: str | Path | None = None, *, random_init: bool = False
) -> tuple[str, str | Path | None]:
    """(registry name, weights file) of `--backbone SPEC [--weights FILE]`.

    SPEC is a registry name, a neco checkpoint file (which names both) or a training run folder (its
    `last.ckpt`). `random_init` (`--random-init`) contradicts any weights file and is refused with one.
    """
    path, name, resolved = Path(spec), spec, weights
    if spec and path.is_dir():
        path = _run_checkpoint(spec, path)
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
    With `weights` the file is loaded through `neco.backbones.create(name, weights=...)`, which reads
    every supported format (a neco checkpoint gives its teacher unless `which="student"`).
    """
    from neco.backbones.factory import create

    name, weights = resolve_backbone(spec, weights, random_init=not pretrained)
    try:
        model = create(name, pretrained=pretrained and weights is None, weights=weights, which=which).eval()
    except ValueError as err:
        if "has no pretrained weights" not in str(err):
            raise
        raise ValueError(f"{err}; pass --weights FILE, or --random-init for an untrained baseline") from err
    return model, {**backbone_identity(model, name, weights), "which": which}
