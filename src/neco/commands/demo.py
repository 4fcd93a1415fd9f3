"""`neco demo`: the main job on the embedded default (no dataset, no download, CPU)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    from neco.commands._backbone import add_backbone_options

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
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--minutes", type=float, default=5.0, help="NeCo post-training budget in minutes")
    add_backbone_options(parser, default="vit_tiny_scenes")
    parser.add_argument("--steps", type=int, help="training steps (default: what fits in --minutes)")
    parser.add_argument(
        "--lr", type=float, help="backbone learning rate of the post-training (default: 5e-05)"
    )
    parser.add_argument("--teacher-steepness", type=float, help="teacher sorting steepness (default 300)")
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke run (tiny sizes; numbers not meaningful)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from neco.backbones.loading import resolve_backbone
    from neco.demo.run import DemoConfig, run_demo

    # a neco checkpoint names both; --random-init with a weights file is refused there
    backbone, weights = resolve_backbone(args.backbone, args.weights, random_init=args.random_init)
    options = dict(
        out=args.out,
        backbone=backbone,
        weights=None if weights is None else str(weights),
        progress=not args.no_progress,
        random_init=args.random_init,
        which=args.which,
        train_steps=args.steps,
        lr_backbone=args.lr,
        teacher_steepness=args.teacher_steepness,
        # --quick has its own budget unless --minutes is given
        minutes=None if args.quick and args.minutes == 5.0 else args.minutes,
    )
    # an option not given (None) leaves the setting's default (DemoConfig's, or --quick's)
    given = {key: value for key, value in options.items() if value is not None}
    run_demo((DemoConfig.quick if args.quick else DemoConfig)(**given))
    return 0
