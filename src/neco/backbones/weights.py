"""One strict loader for every backbone checkpoint format neco knows (see docs/weights.md).

Reading a checkpoint is three steps: unwrap the container (neco checkpoint, Lightning checkpoint,
DINO v1 training checkpoint, plain state dict), pick the teacher or the student, then convert the
backbone keys to the official DINOv2 names. Loading is strict: only `mask_token` may be missing and
only head keys may be left over; anything else is an error naming the keys and the guessed format.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

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

WHICH = {
    "teacher": "the EMA teacher (the better model; default)",
    "student": "the student",
}
_TOLERATED_MISSING = {"mask_token"}
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
    missing_tolerated: list[str] = field(default_factory=list)
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
        if self.missing_tolerated:
            parts.append(f"missing {self.missing_tolerated} (tolerated)")
        parts.extend(self.notes)
        return f"{self.source}: " + ", ".join(parts)


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_PROTOCOL = 0x80  # first byte of a pickle (the legacy torch.save format)


def _looks_like(head: bytes) -> str:
    """What the first bytes of a file that is neither a torch pickle nor safetensors look like."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        return "an HTML/XML page (a download that saved an error or login page?)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "an unknown binary file"
    return "a text file"


def _is_safetensors(head: bytes, size: int) -> bool:
    """True when `head` starts like safetensors: an 8-byte little-endian header length, then JSON."""
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 0 < length <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as err:  # pragma: no cover - safetensors ships with timm
        raise ValueError(
            f"weights file {path}: reading .safetensors needs `pip install safetensors`"
        ) from err
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for any bad file
        raise ValueError(
            f"weights file {path} is not a readable safetensors file ({type(err).__name__}: {err}); "
            "it is truncated or not safetensors at all: download it again"
        ) from err


def read_checkpoint(path: str | Path, *, weights_only: bool = True, mmap: bool = False) -> Any:
    """Read a checkpoint file (`torch.save` pickle with `weights_only` by default, or safetensors).

    `mmap` memory-maps a zip-format torch file, so reading its top-level entries does not read its tensors.

    The one reader of weight files for every command: a file that is empty, text, an HTML page, or
    truncated gets a ValueError naming it and saying what it is not.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(
            f"weights file {path} is empty (0 bytes): not a checkpoint; download or copy it again"
        )
    with path.open("rb") as handle:
        head = handle.read(64)
    if path.suffix == ".safetensors" or _is_safetensors(head, size):
        if not _is_safetensors(head, size):
            raise ValueError(
                f"weights file {path} is not a safetensors file: it looks like {_looks_like(head)} "
                f"(starts with {head[:16]!r})"
            )
        return _read_safetensors(path)
    if not (head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTOCOL):
        raise ValueError(
            f"weights file {path} is not a torch checkpoint or safetensors file: it looks like "
            f"{_looks_like(head)} (starts with {head[:16]!r})"
        )
    try:
        return torch.load(
            path, map_location="cpu", weights_only=weights_only, mmap=mmap and head.startswith(_ZIP_MAGIC)
        )
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused:
            # A real torch pickle holding objects beyond tensors and plain containers.
            raise ValueError(
                f"weights file {path} holds objects that `torch.load(weights_only=True)` refuses "
                f"(e.g. {refused.group(1)}); if you trust the file, load it with "
                "`neco.backbones.read_checkpoint(path, weights_only=False)` and pass the result as weights=, "
                "or re-save its state dict as plain tensors"
            ) from err
        raise ValueError(f"weights file {path} is not a readable torch checkpoint ({err})") from err
    except Exception as err:  # noqa: BLE001 - torch raises many types (EOFError, KeyError, RuntimeError) for bad files
        raise ValueError(
            f"weights file {path} is not a readable torch checkpoint ({type(err).__name__}: {err}); "
            "it is truncated or corrupt: download or copy it again"
        ) from err


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _check_which(which: str) -> None:
    if which not in WHICH:
        raise ValueError(f"`which` must be one of {sorted(WHICH)} but is {which!r}")


def _split_networks(state: Mapping[str, Any], which: str) -> tuple[dict[str, Any], str | None]:
    """Pick `teacher.*` or `student.*`/`model.*` keys when both networks share one state dict."""
    groups = {prefix: {} for prefix in ("teacher.", "student.", "model.")}
    for key, value in state.items():
        for prefix in groups:
            if key.startswith(prefix):
                groups[prefix][key[len(prefix) :]] = value
                break
    student = groups["student."] or groups["model."]
    if not (groups["teacher."] and student):
        return dict(state), None
    return (groups["teacher."] if which == "teacher" else student), which


def extract_state_dict(obj: Any, which: str = "teacher") -> tuple[StateDict, dict[str, Any]]:
    """Unwrap a loaded checkpoint into one backbone state dict (keys still in their own format).

    Returns the tensors and a dict with `container`, `which`, and, for neco checkpoints, `backbone` and
    `num_register_tokens`.
    """
    _check_which(which)
    meta: dict[str, Any] = {"which": None}
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"checkpoint must be a dict of tensors or a training checkpoint but is {type(obj).__name__}"
        )
    if obj.get("format") == "neco-checkpoint":
        if not isinstance(obj.get(which), Mapping):
            raise ValueError(f"neco checkpoint has no `{which}` state dict (keys: {sorted(obj)[:12]})")
        meta.update(
            container="neco checkpoint",
            which=which,
            backbone=obj.get("backbone"),
            num_register_tokens=obj.get("num_register_tokens"),
        )
        state = obj[which]
    elif isinstance(obj.get("teacher"), Mapping) and isinstance(obj.get("student"), Mapping):
        meta.update(container="DINO training checkpoint", which=which)
        state = obj[which]
    elif isinstance(obj.get("state_dict"), Mapping):
        meta.update(container="Lightning checkpoint")
        state = obj["state_dict"]
    elif isinstance(obj.get("model"), Mapping) and not _is_tensor_dict(obj):
        meta.update(container="checkpoint with a `model` entry")
        state = obj["model"]
    else:
        meta.update(container="state dict")
        state = obj
    state, picked = _split_networks(state, which)
    if picked:
        meta["which"] = picked
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{meta['container']} holds no tensors")
    return tensors, meta


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
    """Load a checkpoint of any supported format into a neco `VisionTransformer`, strictly.

    Args:
        model: the backbone (from `neco.backbones.create`).
        source: a file path, or an already loaded checkpoint / state dict.
        which: "teacher" (default; the better model) or "student", for checkpoints holding both.

    Raises:
        ValueError: when keys are missing (other than `mask_token`), unexpected (other than head
            keys) or of the wrong shape; the message names them and the guessed format.
    """
    if getattr(getattr(model, "config", None), "built_by_timm", False):
        return _load_timm_weights(model, source, which)
    state, info = read_state_dict(source, which=which)
    guessed = f"{info.container}, {info.format} keys"
    name = getattr(getattr(model, "config", None), "name", type(model).__name__)
    if info.backbone is not None and info.backbone != name:
        info.notes.append(f"checkpoint trained as {info.backbone!r}")
    if "register_tokens" in state and getattr(model, "num_register_tokens", 0) == 0:
        config = getattr(model, "config", None)
        if config is not None and config.interpolate_antialias:
            # "XR": register-trained weights deliberately used without registers (NeCo DINOv2R-XR).
            state = {k: v for k, v in state.items() if k != "register_tokens"}
            info.notes.append("register tokens unused (model built with 0 registers)")
    pos = state.get("pos_embed")
    if pos is not None and hasattr(model, "set_pos_grid") and pos.shape != model.pos_embed.shape:
        side = int(round((pos.shape[1] - 1) ** 0.5))
        if side * side == pos.shape[1] - 1 and pos.shape[-1] == model.pos_embed.shape[-1]:
            # The model interpolates at run time from whatever grid it was trained with.
            model.set_pos_grid(side)
            info.notes.append(f"position-embedding grid {side}x{side}")
    missing = _check_keys(
        model.state_dict(), state, _TOLERATED_MISSING, f"{info.source} (guessed: {guessed})", name
    )
    model.load_state_dict(state, strict=False)
    info.missing_tolerated = [k for k in missing if k in _TOLERATED_MISSING]
    get_logger("neco.backbones").info(f"loaded {name} from {info.describe()}")
    return info


def _check_keys(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    tolerated_missing: set[str],
    what: str,
    name: str,
) -> list[str]:
    """Refuse missing (beyond `tolerated_missing`), unexpected and misshaped keys; return the missing ones."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    bad_missing = [k for k in missing if k not in tolerated_missing]
    if bad_missing or unexpected or wrong_shape:
        problems = []
        if bad_missing:
            problems.append(f"missing keys {_listing(bad_missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_listing(unexpected)}")
        if wrong_shape:
            problems.append(f"shape mismatches {_listing(wrong_shape)}")
        allowed = (
            f"`{'`, `'.join(sorted(tolerated_missing))}` may be missing and " if tolerated_missing else ""
        )
        raise ValueError(
            f"cannot load {what} into {name}: " + "; ".join(problems) + ". "
            f"Only {allowed}head keys may be unexpected{'' if tolerated_missing else ' (nothing may be missing)'}; "
            "check the backbone name (registers, size, patch) matches the checkpoint"
        )
    return missing


def _load_timm_weights(model: nn.Module, source: str | Path | Mapping[str, Any], which: str) -> WeightsInfo:
    """Strict load into a timm-built backbone (DINOv3, `timm:<name>`): timm or Meta DINOv3 key names."""
    from neco.backbones.timm_weights import to_timm_state

    backbone, info = read_backbone_tensors(source, which=which)
    name = model.config.name
    if info.backbone is not None and info.backbone != name:
        info.notes.append(f"checkpoint trained as {info.backbone!r}")
    state, info.format = to_timm_state(backbone, model.model, name)
    _check_keys(
        model.model.state_dict(),
        state,
        set(),
        f"{info.source} (guessed: {info.container}, {info.format} keys)",
        name,
    )
    model.model.load_state_dict(state, strict=True)
    get_logger("neco.backbones").info(f"loaded {name} from {info.describe()}")
    return info
