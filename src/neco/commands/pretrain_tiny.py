"""`neco pretrain-tiny`: build the demo's starting backbone (image-level pretraining on synthetic scenes)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrain-tiny` subcommand."""
    parser = subparsers.add_parser(
        "pretrain-tiny",
        help="pretrain the tiny demo ViT at image level on synthetic scenes (multi-label classification)",
        description=(
            "Train vit_tiny to recognise which texture classes a synthetic scene contains (CLS token, "
            "binary cross-entropy; no pixel labels). The defaults reproduce the file shipped as "
            "neco/assets/vit_tiny_scenes.pth, which `neco demo` starts from."
        ),
    )
    parser.add_argument("-o", "--out", required=True, help="output file (.pth)")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimisation steps (default: the shipped setting)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="scenes per step (default: the shipped setting)"
    )
    parser.add_argument(
        "--num-scenes",
        type=int,
        default=None,
        help="generated training scenes (default: the shipped setting)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the shipped setting)")
    parser.add_argument("--pool", choices=["mean", "cls"], default=None, help="token(s) the classifier reads")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (results depend on it)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from neco.demo.pretrain import TinyPretrainConfig, pretrain_tiny

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "num_scenes": args.num_scenes,
            "seed": args.seed,
            "pool": args.pool,
        }.items()
        if v is not None
    }
    cfg = dataclasses.replace(TinyPretrainConfig(), **overrides)
    _, log = pretrain_tiny(cfg, args.out)
    print(
        f"wrote {args.out}: {cfg.steps} steps in {log['seconds']:.0f} s, final loss {log['final_loss']:.4f}, "
        f"label accuracy {log['final_label_accuracy']:.3f}"
    )
    return 0
