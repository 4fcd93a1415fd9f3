"""Weight files and the neco checkpoint format: reading any file, unwrapping its container, checking it.

A neco checkpoint (written by `neco train` and `neco pretrain-tiny`) is a `torch.save` dict with
`format: "neco-checkpoint"`, `version`, `backbone` (registry name), `num_register_tokens`, the
`student` and `teacher` backbone state dicts and, for training runs, Lightning's `state_dict`,
optimizer and loop state. This module is the one place that defines and reads it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neco.utils.checksum import CHECKSUM_KEY, named_tensors, tensor_checksum

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "WHICH", "WeightsInfo", "check_tensors_finite"]
__all__ += ["extract_state_dict", "key_problems", "named_tensors", "non_finite_tensors", "read_checkpoint"]
__all__ += ["read_training_checkpoint", "recorded_register_tokens"]

CHECKPOINT_FORMAT = "neco-checkpoint"
CHECKPOINT_VERSION = 1
WHICH = {"teacher": "the EMA teacher (the better model; default)", "student": "the student"}
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format; a legacy pickle starts with 0x80
_SHOWN = 12

StateDict = dict[str, torch.Tensor]


def _is_safetensors(head: bytes, size: int) -> bool:
    """True when `head` starts like safetensors: an 8-byte little-endian header length, then JSON."""
    return len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"


def _looks_like(head: bytes) -> str:
    """What the first bytes of a file that is neither a torch pickle nor safetensors look like."""
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        return "an HTML/XML page (a download that saved an error or login page?)"
    if head.startswith(_ZIP_MAGIC):
        return "a torch checkpoint (zip) named .safetensors: rename it to .pth"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "an unknown binary file"
    return "a text file"


def read_checkpoint(
    path: str | Path, *, weights_only: bool = True, mmap: bool = False, what: str = "weights file"
) -> Any:
    """Read a weights file (`torch.save` pickle with `weights_only` by default, or safetensors).

    `mmap` memory-maps a zip-format torch file, so reading its top-level entries does not read its
    tensors. A file that is missing, empty, text, an HTML page, or truncated gets an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes): not a checkpoint; download or copy it again")
    with path.open("rb") as handle:
        head = handle.read(64)
    safetensors = _is_safetensors(head, size)
    named = path.suffix == ".safetensors"
    if not safetensors and (named or not (head.startswith(_ZIP_MAGIC) or head[0] == 0x80)):
        kind = "safetensors" if named else "torch checkpoint or safetensors"
        raise ValueError(
            f"{what} {path} is not a {kind} file: it looks like {_looks_like(head)} (starts with {head[:16]!r})"
        )
    try:
        if safetensors:
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(
            path, map_location="cpu", weights_only=weights_only, mmap=mmap and head.startswith(_ZIP_MAGIC)
        )
    except Exception as err:  # noqa: BLE001 - torch and safetensors raise many types for bad files
        if refused := re.search(r"Unsupported global: GLOBAL (\S+)", str(err)):
            # A real torch pickle holding objects beyond tensors and plain containers.
            raise ValueError(
                f"{what} {path} holds objects that `torch.load(weights_only=True)` refuses "
                f"(e.g. {refused.group(1)}); if you trust the file, load it with "
                "`neco.backbones.read_checkpoint(path, weights_only=False)` and pass the result as weights=, "
                "or re-save its state dict as plain tensors"
            ) from err
        kind = "safetensors file" if safetensors else "torch checkpoint"
        raise ValueError(
            f"{what} {path} is not a readable {kind} ({type(err).__name__}: {err}); "
            "it is truncated or corrupt: download or copy it again"
        ) from err


def non_finite_tensors(value: Any) -> list[str]:
    """Names of the floating-point tensors inside `value` that hold NaN or infinity."""
    return [
        name
        for name, tensor in named_tensors(value)
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all())
    ]


def check_tensors_finite(checkpoint: Any, path: str | Path, what: str = "checkpoint") -> None:
    """Raise ValueError naming the first tensors of `checkpoint` holding NaN or infinity (corrupt file)."""
    if bad := non_finite_tensors(checkpoint):
        raise ValueError(
            f"{what} {path}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. {bad[:3]}; "
            "the file is corrupt (or was saved from a diverged run)"
        )


def key_problems(
    expected: Mapping[str, torch.Tensor],
    stored: Mapping[str, Any],
    skip_shape: Callable[[str], bool] = lambda k: False,
) -> str:
    """ "missing keys [..]; unexpected keys [..]; shape mismatches [..]" of `stored` against `expected` ("" if none)."""

    def listing(keys: list[str]) -> str:
        more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
        return f"[{', '.join(keys[:_SHOWN])}{more}]"

    wrong = sorted(
        f"{k} {tuple(stored[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(stored) & set(expected)
        if not skip_shape(k) and tuple(stored[k].shape) != tuple(expected[k].shape)
    )
    problems = {
        "missing keys": sorted(set(expected) - set(stored)),
        "unexpected keys": sorted(set(stored) - set(expected)),
        "shape mismatches": wrong,
    }
    return "; ".join(f"{what} {listing(keys)}" for what, keys in problems.items() if keys)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a neco training checkpoint and check it: format keys present, every tensor finite, checksum intact."""
    checkpoint = read_checkpoint(path, what="checkpoint")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path}: not a neco training checkpoint (no `format: {CHECKPOINT_FORMAT}`)"
        )
    if "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {path}: not a neco training checkpoint (no state_dict)")
    check_tensors_finite(checkpoint, path)
    # Checkpoints written before neco stored checksums have none; every newer one must match.
    if (stored := checkpoint.get(CHECKSUM_KEY)) is not None:
        actual = tensor_checksum({k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY})
        if actual != stored:
            raise ValueError(
                f"checkpoint {path}: the tensors do not match the checksum written with them "
                f"({actual} != {stored}); the file was changed or damaged after it was saved"
            )
    return checkpoint


def recorded_register_tokens(weights: str | Path | Mapping[str, Any]) -> int | None:
    """The register-token count a neco or Lightning training checkpoint records; None for other files."""
    obj: Any = weights
    if not isinstance(weights, Mapping):
        if Path(weights).suffix == ".safetensors":
            return None  # a plain tensor file records nothing
        try:  # memory-mapped: the top-level entries are read, the tensors are not
            obj = read_checkpoint(weights, mmap=True)
        except (OSError, ValueError):  # not a readable checkpoint: the loader reports it, naming the file
            return None
    value = obj.get("num_register_tokens") if isinstance(obj, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
        heads = f"{len(self.dropped_head_keys)} head keys dropped" if self.dropped_head_keys else ""
        parts = [self.container, self.which, f"{self.format} keys", heads, *self.notes]
        return f"{self.source}: " + ", ".join(p for p in parts if p)


def extract_state_dict(
    obj: Any, which: str = "teacher", source: str = "state dict"
) -> tuple[StateDict, WeightsInfo]:
    """Unwrap a loaded checkpoint into one backbone state dict (keys still in their own format).

    Returns the tensors and a `WeightsInfo` naming `source`, the container, which network and, for neco
    checkpoints, `backbone` and `num_register_tokens` (`format` is "unknown" until a converter names it).
    """
    if which not in WHICH:
        raise ValueError(f"`which` must be one of {sorted(WHICH)} but is {which!r}")
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"checkpoint must be a dict of tensors or a training checkpoint but is {type(obj).__name__}"
        )
    info = WeightsInfo(source, "state dict", which, "unknown")
    if obj.get("format") == CHECKPOINT_FORMAT:
        if not isinstance(obj.get(which), Mapping):
            raise ValueError(f"neco checkpoint has no `{which}` state dict (keys: {sorted(obj)[:12]})")
        info.container, info.backbone = "neco checkpoint", obj.get("backbone")
        info.num_register_tokens, state = obj.get("num_register_tokens"), obj[which]
    elif isinstance(obj.get("teacher"), Mapping) and isinstance(obj.get("student"), Mapping):
        info.container, state = "DINO training checkpoint", obj[which]
    elif isinstance(obj.get("state_dict"), Mapping):
        info.container, info.which, state = "Lightning checkpoint", None, obj["state_dict"]
    elif isinstance(obj.get("model"), Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        info.container, info.which, state = "checkpoint with a `model` entry", None, obj["model"]
    else:
        info.which, state = None, obj
    # Both networks in one state dict (`teacher.*` and `student.*` / `model.*`): pick one.
    groups: dict[str, dict[str, Any]] = {"teacher.": {}, "student.": {}, "model.": {}}
    for key, value in state.items():
        if prefix := next((p for p in groups if key.startswith(p)), None):
            groups[prefix][key[len(prefix) :]] = value
    student = groups["student."] or groups["model."]
    if groups["teacher."] and student:
        state, info.which = (groups["teacher."] if which == "teacher" else student), which
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{info.container} holds no tensors")
    return tensors, info
