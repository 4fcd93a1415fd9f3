"""`neco pretrain-tiny`: build the demo's starting backbone (image-level pretraining on synthetic scenes)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrain-tiny` subcommand."""
    parser = subparsers.add_parser(
        "pretrain-tiny",
        help="pretrain the tiny demo ViT at image level on synthetic scenes",
        description=(
            "Pretrain vit_tiny at image level on synthetic scenes (no pixel labels). --method multilabel: "
            "recognise which texture classes a crop contains (CLS token, binary cross-entropy); its "
            "defaults reproduce neco/assets/vit_tiny_scenes.pth. --method dino: DINO-style "
            "self-distillation without any label (multi-crop, EMA teacher, centering and sharpening)."
        ),
    )
    parser.add_argument(
        "--method",
        choices=["multilabel", "dino"],
        default="multilabel",
        help="image-level objective: supervised multi-label classification or label-free self-distillation "
        "(default: multilabel)",
    )
    parser.add_argument("-o", "--out", required=True, help="output file (.pth)")
    for option, text in (
        ("--steps", "optimisation steps"),
        ("--batch-size", "scenes per step"),
        ("--num-scenes", "generated training scenes"),
        ("--seed", "random seed"),
    ):
        parser.add_argument(option, type=int, help=f"{text} (default: the method's setting)")
    parser.add_argument(
        "--pool",
        choices=["mean", "cls"],
        help="token(s) the classifier reads (multilabel only; default: cls)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import math

    from neco.demo.dino import TinyDinoConfig, pretrain_tiny_dino
    from neco.demo.pretrain import TinyPretrainConfig, pretrain_tiny

    if args.method == "dino" and args.pool is not None:
        raise SystemExit("error: --pool applies to --method multilabel only (DINO reads the CLS token)")
    overrides = {
        name: getattr(args, name)
        for name in ("steps", "batch_size", "num_scenes", "seed", "pool")
        if getattr(args, name) is not None
    }
    if args.method == "dino":
        cfg = TinyDinoConfig(**overrides)
        _, log = pretrain_tiny_dino(cfg, args.out)
        quality = (
            f"teacher entropy per image {log['final_teacher_entropy']:.2f}, over the batch "
            f"{log['final_teacher_batch_entropy']:.2f} (healthy: low per image, high over the batch; both near "
            f"ln {cfg.out_dim} = {math.log(cfg.out_dim):.2f} is the uniform collapse)"
        )
    else:
        cfg = TinyPretrainConfig(**overrides)
        _, log = pretrain_tiny(cfg, args.out)
        quality = f"label accuracy {log['final_label_accuracy']:.3f}"
    print(
        f"wrote {args.out}: {cfg.steps} steps in {log['seconds']:.0f} s, final loss {log['final_loss']:.4f}, {quality}"
    )
    return 0
