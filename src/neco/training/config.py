"""Typed, validated training configuration: nested frozen dataclasses loaded from YAML + overrides.

A config file is a YAML mapping with the sections `model`, `data` (with `data.crops`), `loss`,
`optim` and `run` (with `run.validation` and `run.attention_validation`); every key is optional and
falls back to the defaults below. Each key is declared once, as an `option(default, help, bounds)`
field (`neco.utils.settings`, as the `neco eval` settings): jsonargparse reads the types (unions such as
`int | list[int] | None` included) from the annotations, `neco train` gets one
option per key (dotted) with its help and default, and `validate` checks bounds and choices. Overrides are
dotted `section.key=value` strings whose value is parsed as YAML (`loss.steepness_student=50`,
`model.trainable_blocks=[10,11]`; strings are taken literally). Unknown keys, wrong types and
out-of-range values raise a `ValueError` naming the key, the value, what was expected and the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neco.utils.settings import option, validate
from neco.utils.yaml_files import load_yaml_file

__all__ = [
    "ModelConfig",
    "CropsConfig",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "ValidationConfig",
    "AttentionValidationConfig",
    "RunConfig",
    "TrainConfig",
    "config_parser",
    "config_keys",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "replace_keys",
    "save_config",
    "yaml_value",
]


def _scale_pair(key: str, pair: tuple[float, float], high: float = 1.0) -> None:
    low_v, high_v = pair
    if not 0 < low_v <= high_v <= high:
        raise ValueError(f"`{key}` must be (low, high) with 0 < low <= high <= {high} but is {list(pair)}")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and projection head."""

    backbone: str = option("dinov2_vits14_reg", "registry name (`neco backbones` lists them)")
    pretrained: bool = option(True, "start from the registry's pretrained weights")
    weights: str | None = option(None, "weights file or neco checkpoint to start from (any supported format)")
    weights_which: str = option(
        "teacher",
        "network of a training checkpoint in `weights` that starts the run",
        choices=("student", "teacher"),
    )
    num_register_tokens: int | None = option(None, "register tokens (none: the backbone's)", minimum=0)
    drop_path_rate: float = option(0.1, "stochastic depth of the student", minimum=0.0, maximum=1.0)
    trainable_blocks: int | list[int] | None = option(
        None, "none: all blocks; N: the last N; a list: those block indices", minimum=0
    )
    head_hidden_dim: int = option(2048, "projection head hidden width", minimum=0, exclusive_minimum=True)
    head_out_dim: int = option(256, "projection head output width", minimum=0, exclusive_minimum=True)
    teacher_head_init: str = option(
        "copy", "copy: the teacher head copies the student's (neco); independent: its own random init (public "
        "NeCo code)", choices=("copy", "independent"),
    )  # fmt: skip

    def check(self) -> None:
        """Rules across keys (called by `validate`)."""
        if self.weights_which != "teacher" and self.weights is None:
            raise ValueError(
                f"`model.weights_which` is {self.weights_which!r} but `model.weights` is null: it picks a "
                "network of a training checkpoint (--backbone CHECKPOINT or --weights FILE)"
            )
        if not self.backbone:
            raise ValueError("`model.backbone` must be a registry name but is empty")
        if isinstance(self.trainable_blocks, list) and not self.trainable_blocks:
            raise ValueError(
                "`model.trainable_blocks` must be null, an int >= 0 or a non-empty list of block indices >= 0 "
                "but is []"
            )


@dataclass(frozen=True)
class CropsConfig:
    """Multi-crop views (sizes in pixels) and their overlap constraints."""

    global_size: int = option(518, "global crop size in pixels", minimum=0, exclusive_minimum=True)
    local_size: int = option(98, "local crop size in pixels", minimum=0, exclusive_minimum=True)
    num_global: int = option(2, "global crops per image", minimum=1)
    num_local: int = option(4, "local crops per image", minimum=0)
    global_scale: tuple[float, float] = option((0.25, 1.0), "area fraction range of the global crops")
    local_scale: tuple[float, float] = option((0.05, 0.25), "area fraction range of the local crops")
    ratio: tuple[float, float] = option((3 / 4, 4 / 3), "aspect ratio range of the crops")
    min_overlap: float = option(0.01, "least overlap of a crop with a global crop", minimum=0.0, maximum=1.0)
    min_overlap_second_global: float = option(
        0.02, "least overlap of the two global crops", minimum=0.0, maximum=1.0
    )
    max_tries: int = option(
        100, "crop draws before the overlap rule gives up", minimum=0, exclusive_minimum=True
    )
    photometric: bool = option(True, "colour jitter, grayscale, blur and solarize")

    def check(self) -> None:
        """Rules across keys (called by `validate`)."""
        if self.num_global + self.num_local < 2:
            raise ValueError(
                "`data.crops.num_global` + `data.crops.num_local` must be >= 2 (a global crop needs another "
                f"crop to pair with) but is {self.num_global + self.num_local}"
            )
        _scale_pair("data.crops.global_scale", self.global_scale)
        _scale_pair("data.crops.local_scale", self.local_scale)
        _scale_pair("data.crops.ratio", self.ratio, high=10.0)


@dataclass(frozen=True)
class DataConfig:
    """Training images and loading."""

    kind: str = option(
        "coco", "folder: any folder of images (recursive); coco: train2017; imagenet: class folders; voc: "
        "JPEGImages; synthetic: generated texture scenes", choices=("coco", "folder", "imagenet", "synthetic", "voc"),
    )  # fmt: skip
    root: str | None = option(None, "dataset folder")
    crops: CropsConfig = field(default_factory=CropsConfig)
    batch_size: int = option(64, "images per step and process", minimum=0, exclusive_minimum=True)
    num_workers: int = option(8, "data loader worker processes", minimum=0)
    max_bad_images: float = option(0.01, "fraction of unreadable images tolerated, in [0, 1)", minimum=0.0)
    synthetic_images: int = option(
        32, "scenes generated for data.kind=synthetic", minimum=0, exclusive_minimum=True
    )
    synthetic_size: int = option(128, "their size in pixels", minimum=0, exclusive_minimum=True)

    def check(self) -> None:
        """Rules across keys (called by `validate`)."""
        if not self.max_bad_images < 1.0:
            raise ValueError(f"`data.max_bad_images` must be in [0, 1) but is {self.max_bad_images}")


@dataclass(frozen=True)
class LossConfig:
    """NeCo loss: sorting network, similarity and references."""

    steepness_student: float = option(100.0, "student sorting steepness", minimum=0, exclusive_minimum=True)
    steepness_teacher: float = option(100.0, "teacher sorting steepness", minimum=0, exclusive_minimum=True)
    network: str = option("bitonic", "sorting network", choices=("bitonic", "odd_even"))
    distribution: str = option(
        "cauchy", "relaxation of the swaps (cauchy: the published one)",
        choices=("cauchy", "gaussian", "logistic", "logistic_phi", "optimal", "reciprocal"),
    )  # fmt: skip
    similarity: str = option(
        "cosine", "patch similarity (cosine: published)", choices=("cosine", "euclidean")
    )
    reference_mode: str = option(
        "queue", "references from the batch or a FIFO queue", choices=("batch", "queue")
    )
    queue_size: int = option(8192, "reference queue length", minimum=0, exclusive_minimum=True)
    queue_gather: bool = option(False, "fill the queue from every process")
    roi_size: int = option(7, "ROI-aligned token grid side", minimum=2, maximum=32)
    masks: str = option(
        "none", "query positions: all, foreground or background", choices=("bg", "fg", "none")
    )
    # 0 is a control run: every update but the loss's gradient (weight decay, EMA, schedules) still acts.
    weight: float = option(1.0, "loss weight (0: a control run)", minimum=0)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with cosine LR / weight-decay schedules and the EMA momentum schedule (per step)."""

    lr_backbone: float = option(1e-5, "backbone learning rate", minimum=0)
    lr_head: float = option(1e-4, "head learning rate", minimum=0)
    lr_end: float = option(0.0, "learning rate at the end of the cosine schedule", minimum=0)
    weight_decay: float = option(0.04, "weight decay at the start", minimum=0)
    weight_decay_end: float = option(0.5, "weight decay at the end", minimum=0)
    momentum: float = option(0.9995, "EMA momentum at the start", minimum=0.0, maximum=1.0)
    momentum_end: float = option(1.0, "EMA momentum at the end", minimum=0.0, maximum=1.0)
    epochs: int = option(
        25, "epochs (the schedules' length unless max_steps)", minimum=0, exclusive_minimum=True
    )
    max_steps: int | None = option(
        None, "length of the run in optimizer steps: sets the LR / weight-decay / EMA schedule length (use "
        "--resume to continue a run)", minimum=0, exclusive_minimum=True,
    )  # fmt: skip
    grad_clip: float | None = option(
        None, "gradient norm clip (none: off)", minimum=0, exclusive_minimum=True
    )
    decay_tokens: bool = option(False, "decay token and position parameters too (the public rule)")


@dataclass(frozen=True)
class ValidationConfig:
    """Optional periodic k-means mIoU on a small VOC-format split."""

    enabled: bool = option(False, "run the k-means validation")
    root: str | None = option(None, "VOC-format folder")
    split: str = option("val", "split read")
    every_steps: int = option(1000, "optimizer steps between validations", minimum=0, exclusive_minimum=True)
    max_images: int = option(100, "images scored", minimum=0, exclusive_minimum=True)
    input_size: int = option(448, "input size in pixels", minimum=0, exclusive_minimum=True)
    num_clusters: int = option(21, "k-means clusters", minimum=2)

    def check(self) -> None:
        """Rules across keys (called by `validate`)."""
        if self.enabled and not self.root:
            raise ValueError(
                "`run.validation.root` must be a VOC-format folder when validation is enabled but is null"
            )


@dataclass(frozen=True)
class AttentionValidationConfig:
    """Optional periodic Jaccard of the teacher's CLS-attention masks (VOC-format split, background = 0)."""

    enabled: bool = option(False, "run the attention validation")
    root: str | None = option(None, "VOC-format folder, or a `neco make-scenes` folder with dataset=scenes")
    dataset: str = option("voc", "layout of root", choices=("scenes", "voc"))
    split: str = option("val", "split read")
    every_steps: int = option(1000, "optimizer steps between validations", minimum=1)
    max_images: int = option(100, "images scored", minimum=1)
    input_size: int = option(448, "input size in pixels (rounded down to whole patches)", minimum=1)
    mass: float = option(0.6, "attention mass kept in a mask", minimum=0, exclusive_minimum=True, maximum=1.0)
    sigma: float = option(0.6, "Gaussian smoothing of the attention", minimum=0)
    min_component: int = option(0, "smallest connected component kept (patches)", minimum=0)
    batch_size: int = option(16, "images per forward", minimum=1)

    def check(self) -> None:
        """Rules across keys (called by `validate`)."""
        if self.enabled and not self.root:
            raise ValueError(
                "`run.attention_validation.root` must be a VOC-format folder when it is enabled but is null"
            )


@dataclass(frozen=True)
class RunConfig:
    """Where and how the run executes: output, devices, precision, logging, checkpoints."""

    out_dir: str = option("runs/neco", "output folder")
    seed: int = option(0, "seed", minimum=0)
    precision: str = option("auto", "auto: bf16 on CUDA, fp32 on CPU", choices=("auto", "bf16", "fp32"))
    compile: bool = option(False, "torch.compile the student")
    accelerator: str = option("auto", "auto (GPU when available), cpu or gpu", choices=("auto", "cpu", "gpu"))
    devices: int | str = option("auto", "devices per node (int or 'auto')", minimum=0, exclusive_minimum=True)
    strategy: str = option("auto", "Lightning strategy (auto, ddp, ...)")
    num_nodes: int = option(1, "number of nodes", minimum=0, exclusive_minimum=True)
    log_every: int = option(10, "steps between logged metrics", minimum=0, exclusive_minimum=True)
    diagnostics_every: int = option(
        100, "steps between collapse diagnostics", minimum=0, exclusive_minimum=True
    )
    ckpt_every_steps: int = option(1000, "steps between checkpoints", minimum=0, exclusive_minimum=True)
    keep_checkpoints: int = option(3, "step checkpoints kept", minimum=0, exclusive_minimum=True)
    stop_at_step: int | None = option(
        None, "stop (resumably) at this step", minimum=0, exclusive_minimum=True
    )
    loggers: list[str] = option(
        ["tensorboard", "csv"], "of csv, tensorboard, wandb", choices=("csv", "tensorboard", "wandb")
    )
    progress: bool = option(True, "progress bar")
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    attention_validation: AttentionValidationConfig = field(default_factory=AttentionValidationConfig)

    def check(self) -> None:
        """Rules across keys (called by `validate`)."""
        if not self.out_dir:
            raise ValueError("`run.out_dir` must be a directory path but is empty")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ValueError(f"`run.devices` must be a positive int or 'auto' but is {self.devices!r}")


@dataclass(frozen=True)
class TrainConfig:
    """The complete configuration of one NeCo training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        validate(self, "")  # every section, its messages naming the dotted keys


# ---------------------------------------------------------------------------------------------
# YAML file + overrides -> TrainConfig, through jsonargparse (types, unions, nested sections)


@functools.cache
def config_parser() -> Any:
    """The jsonargparse parser of `TrainConfig`: a `--config FILE`, then one option per dotted key."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="neco train", exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(TrainConfig, None, fail_untyped=True)
    return parser


def config_keys(cls: type = TrainConfig, prefix: str = "") -> dict[str, tuple[Any, str, str]]:
    """Every dotted key of `TrainConfig` with its default, help and type as written (`int | list[int] | None`)."""
    flat: dict[str, tuple[Any, str, str]] = {}
    for item, value in zip(dataclasses.fields(cls), config_to_dict(cls()).values(), strict=True):
        if dataclasses.is_dataclass(item.default_factory):
            flat.update(config_keys(item.default_factory, f"{prefix}{item.name}."))
        else:
            flat[prefix + item.name] = (value, item.metadata.get("help", ""), item.type)
    return flat


def _translate(text: str) -> str:
    """jsonargparse's message in neco's words: the dotted key, what was expected, a did-you-mean."""
    unknown = re.search(
        r"Group '([\w.]+)' does not accept option '(\w+)'|unrecognized arguments: --([\w.]+)", text
    )
    if unknown:
        key, keys = ".".join(part for part in unknown.groups() if part), config_keys()
        section = key.rpartition(".")[0]
        while section and not any(k.startswith(section + ".") for k in keys):
            key, section = section, section.rpartition(".")[0]
        inside = section + "." if section else ""
        names = sorted({k.removeprefix(inside).split(".")[0] for k in keys if k.startswith(inside)})
        close = difflib.get_close_matches(key.removeprefix(inside), names, n=1)
        scope = f"valid keys of `{section}`" if section else "valid top-level keys"
        hint = f"; did you mean `{inside}{close[0]}`?" if close else ""
        return f"unknown config key `{key}`: {scope} are {names}{hint}"
    typed = re.search(
        r'Parser key "([\w.]+)":\s*(?:Expected a (.+?)\. )?.*?(?:Got|Given) value: ([^\n]*)', text, re.S
    )
    if typed:
        key, expected, value = typed.groups()
        words = {
            "<class 'int'>": "an int",
            "<class 'float'>": "a finite number",
            "<class 'bool'>": "true/false",
        }
        expected = words.get(expected, f"of the type {config_keys()[key][2]}")
        return f"`{key}` must be {expected} but is {yaml_value(value.strip())!r}"
    return text.strip()


def yaml_value(raw: Any) -> Any:
    """A setting's text as the config reads it (YAML, empty: null), or the text itself where it is not YAML."""
    try:
        return yaml.safe_load(raw) if str(raw).strip() else None
    except yaml.YAMLError:
        return raw


def _parse(values: Any, overrides: list[str], source: str) -> TrainConfig:
    """A validated `TrainConfig` of a nested mapping and `section.key=value` overrides (values read as YAML).

    Errors name the key and `source`."""
    from jsonargparse import ArgumentError

    if values is not None and not isinstance(values, dict):
        raise ValueError(f"{source}: expected a mapping of sections but found {type(values).__name__}")
    args = ["--config", yaml.safe_dump(values or {})]
    source += ", with overrides" if overrides else ""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} must have the form `section.key=value` (config: {source})")
        args.append(f"--{key}={raw if raw.strip() else 'null'}")
    parser = config_parser()
    try:
        sections = parser.instantiate(parser.parse_args(args))
        return TrainConfig(**{f.name: sections[f.name] for f in dataclasses.fields(TrainConfig)})
    except (ArgumentError, ValueError, TypeError) as err:
        raise ValueError(f"{_translate(str(err))} (config: {source})") from err


def config_from_dict(values: dict[str, Any] | None) -> TrainConfig:
    """Build and validate a `TrainConfig` from a nested mapping (missing keys take defaults)."""
    return _parse(values, [], "a mapping")


def replace_keys(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """`config` with dotted keys set to typed values (`{"optim.max_steps": 4}`), validated like a file."""
    # an override's text is read as YAML (JSON is YAML), a string option's text as it is
    overrides = [
        f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items()
    ]
    return _parse(config_to_dict(config), overrides, "replace_keys")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (lists instead of tuples) of a config, suitable for YAML and checkpoints."""
    return json.loads(json.dumps(dataclasses.asdict(config)))  # JSON has no tuples: they come back as lists


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults when `path` is None), apply overrides, validate."""
    if path is None:
        return _parse({}, list(overrides or []), "defaults")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--config {path}: no such config file")
    try:
        loaded = load_yaml_file(path)  # refuses a key given twice
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path}: not valid YAML ({err})") from err
    return _parse(loaded, list(overrides or []), str(path))


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    from neco.utils.io import atomic_write

    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    return atomic_write(path, lambda handle: handle.write(text), mode="w")
