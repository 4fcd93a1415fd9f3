"""`neco pretrain-tiny`: build the demo's starting backbone (image-level pretraining on synthetic scenes)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from neco.evaluation.options import add_command, option

_METHOD = "(default: the method's setting)"


@dataclass(kw_only=True)
class PretrainTinySettings:
    """The options of `neco pretrain-tiny`."""

    method: str = option(
        "multilabel",
        "image-level objective: supervised multi-label classification or label-free self-distillation "
        "(default: multilabel)",
        choices=("multilabel", "dino"),
    )
    out: str = option(help="output file (.pth)", flag=("-o", "--out"))
    steps: int | None = option(None, f"optimisation steps {_METHOD}")
    batch_size: int | None = option(None, f"scenes per step {_METHOD}")
    num_scenes: int | None = option(None, f"generated training scenes {_METHOD}")
    seed: int | None = option(None, f"random seed {_METHOD}")
    pool: str | None = option(
        None, "token(s) the classifier reads (multilabel only; default: cls)", choices=("mean", "cls")
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrain-tiny` subcommand."""
    add_command(
        subparsers,
        "pretrain-tiny",
        PretrainTinySettings,
        _run,
        help="pretrain the tiny demo ViT at image level on synthetic scenes",
        description=(
            "Pretrain vit_tiny at image level on synthetic scenes (no pixel labels). --method multilabel: "
            "recognise which texture classes a crop contains (CLS token, binary cross-entropy); its "
            "defaults reproduce neco/assets/vit_tiny_scenes.pth. --method dino: DINO-style "
            "self-distillation without any label (multi-crop, EMA teacher, centering and sharpening)."
        ),
    )


def _run(args: PretrainTinySettings) -> int:
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
