"""Typed, validated training configuration: nested frozen dataclasses loaded from YAML + overrides.

A config file is a YAML mapping with the sections `model`, `data` (with `data.crops`), `loss`,
`optim` and `run` (with `run.validation`); every key is optional and falls back to the
defaults below. Overrides are dotted `section.key=value` strings whose value is parsed as YAML
(`loss.steepness_student=50`, `model.trainable_blocks=[10,11]`). Unknown keys, wrong types and
out-of-range values raise a `ValueError` naming the option, the value, what was expected and the
config file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neco.utils.yaml_files import load_yaml_file

__all__ = [
    "ModelConfig",
    "CropsConfig",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "ValidationConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "save_config",
]

DATA_KINDS = {
    "folder": "any folder of images (recursive)",
    "coco": "COCO train2017 (images/train2017 or train2017)",
    "imagenet": "ImageNet(-100) class folders",
    "voc": "Pascal VOC JPEGImages",
    "synthetic": "generated texture scenes (tests and demo)",
}
NETWORKS = {"bitonic": "bitonic network", "odd_even": "odd-even transposition network"}
DISTRIBUTIONS = {
    "cauchy": "atan(v)/pi + 1/2 (published)",
    "logistic": "sigmoid(v)",
    "logistic_phi": "sigmoid with |a-b| scaling",
    "gaussian": "normal CDF",
    "reciprocal": "v/(2+|v|)",
    "optimal": "optimal monotonic relaxation",
}
SIMILARITIES = {"cosine": "cosine similarity (published)", "euclidean": "negative Euclidean distance"}
REFERENCE_MODES = {"batch": "references from the batch", "queue": "references from a FIFO queue"}
MASK_MODES = {
    "none": "all query positions",
    "fg": "foreground query positions",
    "bg": "background query positions",
}
PRECISIONS = {"auto": "bf16 on CUDA, fp32 on CPU", "fp32": "32-bit float", "bf16": "bfloat16 autocast"}
ACCELERATORS = {"auto": "GPU when available", "cpu": "CPU", "gpu": "CUDA GPU"}
LOGGERS = {"tensorboard": "TensorBoard event files", "csv": "metrics.csv", "wandb": "Weights & Biases"}


def _choice(option: str, value: str, choices: dict[str, str]) -> None:
    if value not in choices:
        raise ValueError(f"`{option}` must be one of {sorted(choices)} but is {value!r}")


def _positive(option: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{option}` must be {bound} but is {value}")


def _in_range(option: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"`{option}` must be in [{low}, {high}] but is {value}")


def _scale_pair(option: str, pair: tuple[float, float], high: float = 1.0) -> None:
    low_v, high_v = pair
    if not 0 < low_v <= high_v <= high:
        raise ValueError(f"`{option}` must be (low, high) with 0 < low <= high <= {high} but is {list(pair)}")


WEIGHTS_WHICH: dict[str, str] = {
    "teacher": "the EMA teacher of a training checkpoint (the better model)",
    "student": "the student of a training checkpoint",
}
TEACHER_HEAD_INITS: dict[str, str] = {
    "copy": "the teacher head starts as a copy of the student head (neco)",
    "independent": "the teacher head gets its own random initialisation (public NeCo code)",
}


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and projection head."""

    backbone: str = "dinov2_vits14_reg"
    pretrained: bool = True
    weights: str | None = None
    # Which network of a training checkpoint in `weights` starts the run (student and teacher both).
    weights_which: str = "teacher"
    num_register_tokens: int | None = None
    drop_path_rate: float = 0.1
    trainable_blocks: int | list[int] | None = None
    head_hidden_dim: int = 2048
    head_out_dim: int = 256
    teacher_head_init: str = "copy"

    def __post_init__(self) -> None:
        _choice("model.teacher_head_init", self.teacher_head_init, TEACHER_HEAD_INITS)
        _choice("model.weights_which", self.weights_which, WEIGHTS_WHICH)
        if self.weights_which != "teacher" and self.weights is None:
            raise ValueError(
                f"`model.weights_which` is {self.weights_which!r} but `model.weights` is null: it picks a "
                "network of a training checkpoint (--backbone CHECKPOINT or --weights FILE)"
            )
        if not self.backbone:
            raise ValueError("`model.backbone` must be a registry name but is empty")
        if self.num_register_tokens is not None:
            _positive("model.num_register_tokens", self.num_register_tokens, allow_zero=True)
        _in_range("model.drop_path_rate", self.drop_path_rate, 0.0, 1.0)
        if isinstance(self.trainable_blocks, int):
            _positive("model.trainable_blocks", self.trainable_blocks, allow_zero=True)
        elif isinstance(self.trainable_blocks, list):
            if not self.trainable_blocks or any(b < 0 for b in self.trainable_blocks):
                raise ValueError(
                    f"`model.trainable_blocks` must be null, an int >= 0 or a non-empty list of block "
                    f"indices >= 0 but is {self.trainable_blocks}"
                )
        _positive("model.head_hidden_dim", self.head_hidden_dim)
        _positive("model.head_out_dim", self.head_out_dim)


@dataclass(frozen=True)
class CropsConfig:
    """Multi-crop views (sizes in pixels) and their overlap constraints."""

    global_size: int = 518
    local_size: int = 98
    num_global: int = 2
    num_local: int = 4
    global_scale: tuple[float, float] = (0.25, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.25)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_overlap: float = 0.01
    min_overlap_second_global: float = 0.02
    max_tries: int = 100
    photometric: bool = True

    def __post_init__(self) -> None:
        _positive("data.crops.global_size", self.global_size)
        _positive("data.crops.local_size", self.local_size)
        if self.num_global < 1:
            raise ValueError(f"`data.crops.num_global` must be >= 1 but is {self.num_global}")
        _positive("data.crops.num_local", self.num_local, allow_zero=True)
        if self.num_global + self.num_local < 2:
            raise ValueError(
                "`data.crops.num_global` + `data.crops.num_local` must be >= 2 (a global crop needs another "
                f"crop to pair with) but is {self.num_global + self.num_local}"
            )
        _scale_pair("data.crops.global_scale", self.global_scale)
        _scale_pair("data.crops.local_scale", self.local_scale)
        _scale_pair("data.crops.ratio", self.ratio, high=10.0)
        _in_range("data.crops.min_overlap", self.min_overlap, 0.0, 1.0)
        _in_range("data.crops.min_overlap_second_global", self.min_overlap_second_global, 0.0, 1.0)
        _positive("data.crops.max_tries", self.max_tries)


@dataclass(frozen=True)
class DataConfig:
    """Training images and loading."""

    kind: str = "coco"
    root: str | None = None
    crops: CropsConfig = field(default_factory=CropsConfig)
    batch_size: int = 64
    num_workers: int = 8
    max_bad_images: float = 0.01
    synthetic_images: int = 32
    synthetic_size: int = 128

    def __post_init__(self) -> None:
        _choice("data.kind", self.kind, DATA_KINDS)
        _positive("data.batch_size", self.batch_size)
        _positive("data.num_workers", self.num_workers, allow_zero=True)
        if not 0.0 <= self.max_bad_images < 1.0:
            raise ValueError(f"`data.max_bad_images` must be in [0, 1) but is {self.max_bad_images}")
        _positive("data.synthetic_images", self.synthetic_images)
        _positive("data.synthetic_size", self.synthetic_size)


@dataclass(frozen=True)
class LossConfig:
    """NeCo loss: sorting network, similarity and references."""

    steepness_student: float = 100.0
    steepness_teacher: float = 100.0
    network: str = "bitonic"
    distribution: str = "cauchy"
    similarity: str = "cosine"
    reference_mode: str = "queue"
    queue_size: int = 8192
    queue_gather: bool = False
    roi_size: int = 7
    masks: str = "none"
    # 0 is a control run: every update but the loss's gradient (weight decay, EMA, schedules) still acts.
    weight: float = 1.0

    def __post_init__(self) -> None:
        _positive("loss.steepness_student", self.steepness_student)
        _positive("loss.weight", self.weight, allow_zero=True)
        _positive("loss.steepness_teacher", self.steepness_teacher)
        _choice("loss.network", self.network, NETWORKS)
        _choice("loss.distribution", self.distribution, DISTRIBUTIONS)
        _choice("loss.similarity", self.similarity, SIMILARITIES)
        _choice("loss.reference_mode", self.reference_mode, REFERENCE_MODES)
        _positive("loss.queue_size", self.queue_size)
        if not 2 <= self.roi_size <= 32:
            raise ValueError(f"`loss.roi_size` must be in [2, 32] but is {self.roi_size}")
        _choice("loss.masks", self.masks, MASK_MODES)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with cosine LR / weight-decay schedules and the EMA momentum schedule (per step)."""

    lr_backbone: float = 1e-5
    lr_head: float = 1e-4
    lr_end: float = 0.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.5
    momentum: float = 0.9995
    momentum_end: float = 1.0
    epochs: int = 25
    max_steps: int | None = None
    grad_clip: float | None = None
    decay_tokens: bool = False

    def __post_init__(self) -> None:
        _positive("optim.lr_backbone", self.lr_backbone, allow_zero=True)
        _positive("optim.lr_head", self.lr_head, allow_zero=True)
        _positive("optim.lr_end", self.lr_end, allow_zero=True)
        _positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        _positive("optim.weight_decay_end", self.weight_decay_end, allow_zero=True)
        _in_range("optim.momentum", self.momentum, 0.0, 1.0)
        _in_range("optim.momentum_end", self.momentum_end, 0.0, 1.0)
        _positive("optim.epochs", self.epochs)
        if self.max_steps is not None:
            _positive("optim.max_steps", self.max_steps)
        if self.grad_clip is not None:
            _positive("optim.grad_clip", self.grad_clip)


@dataclass(frozen=True)
class ValidationConfig:
    """Optional periodic k-means mIoU on a small VOC-format split."""

    enabled: bool = False
    root: str | None = None
    split: str = "val"
    every_steps: int = 1000
    max_images: int = 100
    input_size: int = 448
    num_clusters: int = 21

    def __post_init__(self) -> None:
        if self.enabled and not self.root:
            raise ValueError(
                "`run.validation.root` must be a VOC-format folder when validation is enabled but is null"
            )
        _positive("run.validation.every_steps", self.every_steps)
        _positive("run.validation.max_images", self.max_images)
        _positive("run.validation.input_size", self.input_size)
        if self.num_clusters < 2:
            raise ValueError(f"`run.validation.num_clusters` must be >= 2 but is {self.num_clusters}")


@dataclass(frozen=True)
class RunConfig:
    """Where and how the run executes: output, devices, precision, logging, checkpoints."""

    out_dir: str = "runs/neco"
    seed: int = 0
    precision: str = "auto"
    compile: bool = False
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    log_every: int = 10
    diagnostics_every: int = 100
    ckpt_every_steps: int = 1000
    keep_checkpoints: int = 3
    stop_at_step: int | None = None
    loggers: list[str] = field(default_factory=lambda: ["tensorboard", "csv"])
    progress: bool = True
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise ValueError("`run.out_dir` must be a directory path but is empty")
        _positive("run.seed", self.seed, allow_zero=True)
        _choice("run.precision", self.precision, PRECISIONS)
        _choice("run.accelerator", self.accelerator, ACCELERATORS)
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ValueError(f"`run.devices` must be a positive int or 'auto' but is {self.devices!r}")
        if isinstance(self.devices, int):
            _positive("run.devices", self.devices)
        _positive("run.num_nodes", self.num_nodes)
        _positive("run.log_every", self.log_every)
        _positive("run.diagnostics_every", self.diagnostics_every)
        _positive("run.ckpt_every_steps", self.ckpt_every_steps)
        _positive("run.keep_checkpoints", self.keep_checkpoints)
        if self.stop_at_step is not None:
            _positive("run.stop_at_step", self.stop_at_step)
        for name in self.loggers:
            _choice("run.loggers[]", name, LOGGERS)


@dataclass(frozen=True)
class TrainConfig:
    """The complete configuration of one NeCo training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with type checking


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0]).split()[-1]}s" + (
            f" (length {len(args)})" if origin is tuple else ""
        )
    return {int: "an int", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, option: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, option)
            except ValueError:
                continue
        raise ValueError(f"`{option}` must be {_type_name(tp)} but is {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"`{option}` must be {_type_name(tp)} but is {value!r}")
        return tuple(_coerce(v, a, f"{option}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ValueError(f"`{option}` must be {_type_name(tp)} but is {value!r}")
        return [_coerce(v, arg, f"{option}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # PyYAML (YAML 1.1) reads `3e-4` (no dot) as a string; accept what float() accepts.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            # Every float setting is a rate, a scale or a bound: inf / nan would pass `>= 0` checks and
            # ruin the run's weights (an infinite learning rate) instead of failing here.
            if not math.isfinite(number):
                raise ValueError(f"`{option}` must be a finite number but is {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ValueError(f"`{option}` must be {_type_name(tp)} but is {value!r}")


def _build(cls: type, values: dict[str, Any] | None, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    values = {} if values is None else values
    where = prefix.rstrip(".")
    if not isinstance(values, dict):
        raise ValueError(f"{f'`{where}`' if where else 'the config'} must be a mapping but is {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean `{prefix}{close[0]}`?" if close else ""
            scope = f"valid keys of `{where}`" if where else "valid top-level keys"
            raise ValueError(f"unknown config key `{prefix}{key}`: {scope} are {names}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any] | None) -> TrainConfig:
    """Build and validate a `TrainConfig` from a nested mapping (missing keys take defaults)."""
    return _build(TrainConfig, values, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (lists instead of tuples) of a config, suitable for YAML and checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `values` with dotted `a.b.c=value` overrides applied (values parsed as YAML)."""
    import copy

    result = copy.deepcopy(values)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must have the form `section.key=value`")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} must have the form `section.key=value`")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({err})") from err
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: `{part}` is not a section")
            node = child
        node[parts[-1]] = value
    return result


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults when `path` is None), apply overrides, validate."""
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such config file")
        try:
            loaded = load_yaml_file(path)
        except yaml.YAMLError as err:
            raise ValueError(f"--config {path}: not valid YAML ({err})") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(
                f"--config {path}: expected a mapping of sections but found {type(loaded).__name__}"
            )
        values = loaded or {}
    try:
        values = apply_overrides(values, list(overrides or []))
        return config_from_dict(values)
    except ValueError as err:
        raise ValueError(f"{err} (config: {source}{', with overrides' if overrides else ''})") from err


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    from neco.utils.io import atomic_write

    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    return atomic_write(path, lambda handle: handle.write(text), mode="w")
