"""What may change when a run is resumed: compare the checkpoint's configuration with the new one.

Settings that only steer the optimisation from here on (learning rates, weight decay, EMA momentum,
the step to stop at, gradient clipping) and bookkeeping (logging, checkpoint cadence, output folder,
progress bar, validation) may change on resume: they are applied from the resume step and recorded
in the run (`config_changes.yaml` and the checkpoint). Everything else (model, crops, loss, data,
seed, devices, precision) defines what the checkpoint is; changing it is refused with the list of
differences unless explicitly allowed (`--allow-config-change`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from neco.training.config import TrainConfig, config_from_dict, config_to_dict

__all__ = [
    "RESUMABLE",
    "ConfigChangeError",
    "config_differences",
    "check_config_change",
    "record_changes",
    "dataset_identity",
    "check_dataset_identity",
]

# Dotted prefixes of the settings that may change on resume.
RESUMABLE = (
    "optim.",
    "run.out_dir",
    "run.log_every",
    "run.diagnostics_every",
    "run.ckpt_every_steps",
    "run.keep_checkpoints",
    "run.stop_at_step",
    "run.loggers",
    "run.progress",
    "run.compile",
    "run.validation.",
    "run.attention_validation.",
    "data.num_workers",
)
# Exceptions under a resumable prefix: they change which parameters share an optimizer group, and the
# optimizer state stored in the checkpoint is laid out by those groups.
FIXED = ("optim.decay_tokens",)
CHANGES_FILE = "config_changes.yaml"


class ConfigChangeError(ValueError):
    """Resuming with settings that cannot change on resume (model, crops, loss, data, ...)."""


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): values}


def config_differences(stored: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """`{dotted key: (stored value, new value)}` for every setting that differs.

    A key the stored config lacks (added to neco after the checkpoint was written) counts as changed
    unless it has its default value, which is the behaviour the checkpoint was trained with.
    """
    old, new = _flatten(stored), _flatten(config_to_dict(config))
    defaults = _flatten(config_to_dict(config_from_dict(None)))
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
        and not (key not in old and key in defaults and new[key] == defaults[key])
    }


def _resumable(key: str) -> bool:
    if key in FIXED:
        return False
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUMABLE)


def check_config_change(
    stored: dict[str, Any] | None, config: TrainConfig, path: Path, *, allow: bool = False
) -> dict[str, tuple[Any, Any]]:
    """The differences between the checkpoint's config and `config`; raise on a fixed setting unless `allow`."""
    if not stored:
        return {}
    differences = config_differences(stored, config)
    fixed = {k: v for k, v in differences.items() if not _resumable(k)}
    if fixed and not allow:
        listed = "; ".join(f"`{k}`: {old!r} -> {new!r}" for k, (old, new) in fixed.items())
        raise ConfigChangeError(
            f"--resume {path}: the checkpoint was trained with other settings that cannot change on resume: "
            f"{listed}. Use the checkpoint's settings (its config is stored in it and in config.yaml), start "
            "a new run, or pass --allow-config-change to continue anyway (recorded in the run)"
        )
    return differences


def record_changes(out_dir: Path, step: int, differences: dict[str, tuple[Any, Any]]) -> Path:
    """Append the changes made at `step` to `<out_dir>/config_changes.yaml` (atomic rewrite)."""
    from neco.utils.io import atomic_write

    path = Path(out_dir) / CHANGES_FILE
    history: list[Any] = []
    if path.is_file():
        loaded = yaml.safe_load(path.read_text())
        history = loaded if isinstance(loaded, list) else []
    history.append(
        {"step": int(step), "changes": {k: {"from": old, "to": new} for k, (old, new) in differences.items()}}
    )
    text = yaml.safe_dump(history, sort_keys=False)
    return atomic_write(path, lambda handle: handle.write(text), mode="w")


def dataset_identity(files: list[Path]) -> dict[str, Any]:
    """`{"count", "sha256"}` of the training images: the number of files and a hash of their sorted paths.

    Paths are taken relative to the files' common folder, so a moved dataset keeps its identity.
    """
    import hashlib
    import os

    names = [str(p) for p in files]
    base = os.path.commonpath(names) if len(names) > 1 else os.path.dirname(names[0]) if names else ""
    digest = hashlib.sha256()
    for name in sorted(os.path.relpath(n, base) if base else n for n in names):
        digest.update(name.encode() + b"\0")
    return {"count": len(names), "sha256": digest.hexdigest()}


def check_dataset_identity(
    stored: dict[str, Any] | None, current: dict[str, Any] | None, path: Path, *, allow: bool = False
) -> dict[str, tuple[Any, Any]]:
    """`{"data.images": (old, new)}` when the training images changed since `path`; raise unless `allow`."""
    if not stored or not current or stored == current:
        return {}
    if stored["count"] != current["count"]:
        what = f"{stored['count']} image files then, {current['count']} now"
    else:
        what = f"the same number of files ({current['count']}) but other names"
    if not allow:
        raise ConfigChangeError(
            f"--resume {path}: the training images changed since this checkpoint was written ({what}; "
            f"sorted file list {stored['sha256'][:12]} -> {current['sha256'][:12]}). Restore the images, or pass "
            "--allow-config-change to continue on the new set (recorded in the run)"
        )
    old = f"{stored['count']} files {stored['sha256'][:12]}"
    return {"data.images": (old, f"{current['count']} files {current['sha256'][:12]}")}
