"""The backbone options of every command that runs a model (`eval`, `features`, `explore`, `demo`, `train`), declared once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from neco.evaluation.options import option

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
    """Add `--backbone` (required unless `default` or `optional`), `--weights`, `--which` and `--random-init`.

    `optional` (`neco train`): an option not given stays None, so the config's value holds.
    """
    group.add_argument(
        "--backbone",
        default=default,
        required=default is None and not optional,
        metavar="NAME|CHECKPOINT",
        help=BACKBONE_HELP,
    )
    group.add_argument(
        "--weights", metavar="FILE", help="weights file of any supported format for --backbone NAME"
    )
    group.add_argument(
        "--which",
        default=None if optional else "teacher",
        choices=["teacher", "student"],
        help="network of a checkpoint holding student and teacher (default: teacher, the better model)",
    )
    group.add_argument("--random-init", action="store_true", help="no pretrained weights (tests, baselines)")


def load_backbone_of(args: argparse.Namespace | BackboneSettings) -> tuple[Any, dict[str, Any]]:
    """The backbone the parsed options name, in eval mode, and its identity for result files."""
    from neco.backbones.loading import load_backbone

    return load_backbone(
        args.backbone, weights=args.weights, pretrained=not args.random_init, which=args.which
    )
