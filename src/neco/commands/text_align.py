"""`neco text-align`: train Talk2DINO's text-to-patch mapping on image-caption pairs (backbone and text frozen)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from neco.commands._backbone import BACKBONE_HELP, BackboneSettings
from neco.evaluation.options import add_command, option
from neco.training.text_align_config import TextAlignConfig

__all__ = ["TextAlignSettings", "register"]


@dataclass(kw_only=True)
class TextAlignSettings(BackboneSettings, TextAlignConfig):
    """The options of `neco text-align`: the `TextAlignConfig` keys, the backbone options, resume and overwrite."""

    backbone: str = option("dinov2_vitb14_reg", BACKBONE_HELP, metavar="NAME|CHECKPOINT")
    text_config: Path | None = option(
        None,
        "an open_clip CLIP config file: a randomly initialised tower",
        metavar="JSON",
        group="text encoder (open_clip)",
    )
    resume: str | None = option(
        None,
        "continue a run: auto (the --out run's newest readable checkpoint) or a file",
        metavar="auto|CKPT",
        group="run",
    )
    overwrite: bool = option(False, "delete the --out run's checkpoints and start again", group="run")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `text-align` subcommand."""
    add_command(
        subparsers,
        "text-align",
        TextAlignSettings,
        _run,
        help="train a text-to-patch mapping (Talk2DINO) for open-vocabulary segmentation",
        description=(
            "Train the mapping from a frozen CLIP text encoder (open_clip) into a frozen backbone's patch "
            "space on image-caption pairs (Talk2DINO, arXiv 2411.19331). Writes checkpoints/step_*.ckpt "
            "and last.ckpt (use with `neco eval openvocab --mapping`), text_align.json and logs to --out."
        ),
    )


def _run(args: TextAlignSettings) -> int:
    from neco.training.text_align import train_text_align

    if args.random_init:
        raise ValueError(
            "`--random-init` makes no sense for text-align: the mapping needs a trained backbone"
        )
    text_config = None
    if args.text_config is not None:
        if not args.text_config.is_file():
            raise FileNotFoundError(f"--text-config {args.text_config}: file not found")
        try:
            text_config = json.loads(args.text_config.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"--text-config {args.text_config}: not valid JSON ({err})") from err
    keys = {f.name for f in dataclasses.fields(TextAlignConfig)}
    config = TextAlignConfig(
        **{
            **{k: getattr(args, k) for k in keys},
            "text_config": text_config,
            "devices": args.devices if args.devices == "auto" else int(args.devices),
        }
    )
    result = train_text_align(config, resume=args.resume, overwrite=args.overwrite)
    state = "stopped" if result.interrupted else "finished"
    loss = result.metrics.get("loss")
    shown = "n/a" if loss is None else f"{loss:.4f}"
    print(f"text-align {state} at step {result.global_step} (loss {shown}) -> {result.last_checkpoint}")
    return 0
