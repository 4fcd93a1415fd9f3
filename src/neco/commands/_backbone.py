"""The backbone options of every command that runs a model (`eval`, `features`, `explore`, `demo`, `train`), declared once."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from neco.evaluation.options import add_options, option

__all__ = ["BACKBONE_HELP", "BackboneSettings", "add_backbone_options", "load_backbone_of"]


BACKBONE_HELP = "registry name (`neco backbones` lists them) or a neco checkpoint file"


@dataclass(kw_only=True)
class BackboneSettings:
    """`--backbone`, `--weights`, `--which` and `--random-init` of a command's settings dataclass."""

    backbone: str = option(
        help=BACKBONE_HELP,
        metavar="NAME|CHECKPOINT",
    )
    weights: str | None = option(
        None, "weights file of any supported format for --backbone NAME", metavar="FILE"
    )
    which: str = option(
        "teacher",
        "network of a checkpoint holding student and teacher (default: teacher, the better model)",
        choices=("teacher", "student"),
    )
    random_init: bool = option(False, "no pretrained weights (tests, baselines)")


def add_backbone_options(group: Any, *, default: str | None = None, optional: bool = False) -> None:
    """Add the `BackboneSettings` options; `--backbone` is required unless `default` or `optional`.

    `optional` (`neco train`): an option not given stays None, so the config's value holds.
    """
    add_options(group, BackboneSettings)
    for action in group._actions[-len(dataclasses.fields(BackboneSettings)) :]:  # the ones just added
        if action.dest == "backbone":
            action.required, action.default = default is None and not optional, default
            action.help = BACKBONE_HELP + ("" if default is None else " (default: %(default)s)")
        elif action.dest == "which" and optional:
            action.default = None


def load_backbone_of(args: argparse.Namespace | BackboneSettings) -> tuple[Any, dict[str, Any]]:
    """The backbone the parsed options name, in eval mode, and its identity for result files."""
    from neco.backbones.loading import load_backbone

    return load_backbone(
        args.backbone, weights=args.weights, pretrained=not args.random_init, which=args.which
    )
