"""`neco demo`: the main job on the embedded default (no dataset, no download, CPU)."""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    from neco.commands._backbone import add_backbone_options
    from neco.demo.run import DemoConfig
    from neco.evaluation.options import add_options

    parser = subparsers.add_parser(
        "demo",
        help="see NeCo work in minutes on CPU: before/after evaluation of a tiny pretrained ViT on synthetic scenes",
        description=(
            "Generate synthetic texture scenes, evaluate the starting backbone (Hummingbird retrieval, linear "
            "segmentation, overclustering; several seeds), post-train it with NeCo, evaluate again, and write "
            "DIR/report.html, DIR/report.md and DIR/results.json. Rerunning into the same DIR reuses a part "
            "(scenes, training) only when its settings are unchanged and redoes the others, saying which."
        ),
    )
    add_backbone_options(parser, default="vit_tiny_scenes")
    add_options(parser, DemoConfig)
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke run (tiny sizes; numbers not meaningful)"
    )
    # an option not given stays out of the namespace: DemoConfig's default, or --quick's, holds
    for action in parser._actions:
        if action.dest in {f.name for f in dataclasses.fields(DemoConfig) if f.metadata["cli"]}:
            action.default = argparse.SUPPRESS
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from neco.backbones.loading import resolve_backbone
    from neco.demo.run import DemoConfig, run_demo

    # a neco checkpoint names both; --random-init with a weights file is refused there
    backbone, weights = resolve_backbone(args.backbone, args.weights, random_init=args.random_init)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig) if hasattr(args, f.name)}
    given.update(backbone=backbone, weights=None if weights is None else str(weights))
    run_demo((DemoConfig.quick if args.quick else DemoConfig)(**given))
    return 0
