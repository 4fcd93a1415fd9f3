"""`neco train`: NeCo post-training from a YAML preset plus dotted overrides."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_config", "register"]

# Short spellings of a few config keys; every key also has its `--section.key` option.
_SHORT = {
    "run.out_dir": "--out",
    "optim.max_steps": "--max-steps",
    "run.devices": "--devices",
    "run.strategy": "--strategy",
    "run.num_nodes": "--num-nodes",
    "run.accelerator": "--accelerator",
}


class _SetKey(argparse.Action):
    """Record (option and value as given, config key, value text) in order; the config parser types the value."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        namespace.key_options = [*namespace.key_options, (f"{option_string} {values}", self.dest, values)]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    from neco.commands._backbone import add_backbone_options
    from neco.training.config import config_keys

    parser = subparsers.add_parser(
        "train",
        help="post-train a ViT with NeCo",
        usage="neco train [-h] --config PRESET|FILE [options] [section.key=value ...]",
        description=(
            "Train NeCo from a config preset (configs/*.yaml). Any config key can be overridden as "
            "section.key=value or as its option (--loss.steepness_student 50), before or after the other options, e.g. data.root=/data/coco "
            "loss.steepness_student=50; values are read as YAML (strings literally). The options that set "
            "one config key each (--out: run.out_dir, --backbone: model.backbone, ...) and an override of "
            "the same key must agree."
        ),
    )
    parser.add_argument(
        "--config",
        required=True,
        help="YAML file, or the name of a preset installed with neco (tiny_cpu, small/neco_dinov2r, ...)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides section.key=value (values parsed as YAML), before or after the options",
    )
    add_backbone_options(
        parser.add_argument_group(
            "start weights",
            "one loading rule with neco eval / features, pretrained unless --random-init; each option sets "
            "config keys: --backbone model.backbone (a neco checkpoint: its recorded backbone, and "
            "model.weights the file), --weights model.weights, --which model.weights_which, --random-init "
            "model.pretrained=false",
        ),
        optional=True,
    )
    parser.add_argument("--resume", metavar="PATH|auto", help="checkpoint to continue from, or 'auto'")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run even where the output folder holds checkpoints (deletes them)",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="on --resume, accept changed model / crops / loss / data settings (recorded in the run)",
    )
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    keys = parser.add_argument_group("config keys", "each sets one key of the config (default: the preset's)")
    for key, (default, text, _) in config_keys().items():
        keys.add_argument(
            *[f"--{key}", *([_SHORT[key]] if key in _SHORT else [])], action=_SetKey, dest=key, metavar="VALUE",
            default=argparse.SUPPRESS, help=f"{text} (built-in default: {default})".replace("%", "%%"),
        )  # fmt: skip
    parser.set_defaults(func=run, key_options=[])


def run(args: argparse.Namespace) -> int:
    """Handler of `neco train`."""
    from neco.data.images import UnreadableImagesError
    from neco.training.checkpoint import CheckpointWriteError, DivergenceError, TrainingAborted
    from neco.training.run import train

    config = build_config(args)
    print(f"neco train: writing to {config.run.out_dir}", file=sys.stderr)
    try:
        result = train(
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            allow_config_change=args.allow_config_change,
            progress=False if args.no_progress else None,
        )
    except (DivergenceError, UnreadableImagesError, CheckpointWriteError, MemoryError) as err:
        print(f"neco train: error: {err}", file=sys.stderr)
        return 1
    except TrainingAborted as aborted:
        last = aborted.last_saved or _newest(config.run.out_dir)
        print(
            f"neco train: {aborted.args[0].split(';')[0]} (nothing saved mid-step); "
            + (f"resume from the last saved step with --resume {last}" if last else "no checkpoint yet"),
            file=sys.stderr,
        )
        return 128 + aborted.signum
    last = result.last_checkpoint or "none"
    skipped = f"{len(result.skipped_images)} unreadable images skipped"
    if result.interrupted:
        name = signal.Signals(result.stop_signal or signal.SIGINT).name
        print(
            f"neco train: stopped by {name} at step {result.global_step}; resume with --resume {last}; "
            f"{skipped}",
            file=sys.stderr,
        )
        return 128 + int(result.stop_signal or signal.SIGINT)
    print(f"neco train: done, {result.global_step} steps, {skipped}; last checkpoint {last}", file=sys.stderr)
    return 0


def build_config(args: argparse.Namespace) -> Any:
    """The run's `TrainConfig`: `--config`, its dotted overrides and the options (which set config keys).

    Two settings of the same key (an option and an override, or two options) must agree; otherwise a
    ValueError names both.
    """
    from neco.training.config import load_config, yaml_value

    given = _weight_settings(args) + args.key_options
    given += [
        (override, override.partition("=")[0].strip(), override.partition("=")[2])
        for override in args.overrides
    ]
    first: dict[str, tuple[str, Any]] = {}
    for label, key, value in given:
        if key in first and yaml_value(first[key][1]) != yaml_value(value):
            raise ValueError(
                f"`{first[key][0]}` and `{label}` both set `{key}` to different values: give one of them"
            )
        first.setdefault(key, (label, value))
    options = [f"{key}={value}" for _, key, value in given[: len(given) - len(args.overrides)]]
    return load_config(_config_file(args.config), [*options, *args.overrides])


def _weight_settings(args: argparse.Namespace) -> list[tuple[str, str, Any]]:
    """(option, key, value) of --backbone / --weights / --which / --random-init, resolved as `neco eval` does."""
    from neco.backbones.loading import resolve_backbone

    # without --backbone the config's backbone holds ("" names none); --weights is checked all the same
    name, weights = resolve_backbone(args.backbone or "", args.weights, random_init=args.random_init)
    given = f"--weights {args.weights}" if args.weights is not None else f"--backbone {args.backbone}"
    settings = [
        (f"--backbone {args.backbone}", "model.backbone", None if args.backbone is None else name),
        (given, "model.weights", None if weights is None else str(weights)),
        ("--random-init", "model.pretrained", "false" if args.random_init else None),
        (f"--which {args.which}", "model.weights_which", args.which),
    ]
    return [setting for setting in settings if setting[2] is not None]


def _newest(out_dir: str) -> str | None:
    """`last.ckpt` of `out_dir` when there is one (a run aborted before its first save in this process)."""
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    return str(last.resolve()) if last.exists() else None


def _config_file(value: str) -> str:
    """`--config` as given when it is a file, else the installed preset of that name (if there is one)."""
    from neco.training.presets import preset_path

    if Path(value).is_file():
        return value
    try:
        return str(preset_path(value))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--config {value}: no such config file, and {err}") from err
