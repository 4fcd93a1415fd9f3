"""`neco text-align`: train Talk2DINO's text-to-patch mapping on image-caption pairs (backbone and text frozen)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neco.commands._backbone import add_backbone_options

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `text-align` subcommand."""
    parser = subparsers.add_parser(
        "text-align",
        help="train a text-to-patch mapping (Talk2DINO) for open-vocabulary segmentation",
        description=(
            "Train the mapping from a frozen CLIP text encoder (open_clip) into a frozen backbone's patch "
            "space on image-caption pairs (Talk2DINO, arXiv 2411.19331). Writes checkpoints/step_*.ckpt "
            "and last.ckpt (use with `neco eval openvocab --mapping`), text_align.json and logs to --out."
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", required=True, type=Path, help="caption dataset root")
    data.add_argument("--layout", default="coco", choices=("coco", "folder"), help="caption dataset layout")
    data.add_argument(
        "--split", default="train2017", help="COCO Captions split (annotations/captions_SPLIT.json)"
    )
    data.add_argument("--input-size", type=int, default=448, help="square image side in pixels")
    data.add_argument(
        "--no-cache-features",
        action="store_true",
        help="run the backbone at every step instead of caching each image's pooled features once",
    )
    add_backbone_options(parser.add_argument_group("backbone"), default="dinov2_vitb14_reg")
    text = parser.add_argument_group("text encoder (open_clip)")
    text.add_argument("--text-model", default="ViT-B-16", help="open_clip model name")
    text.add_argument("--text-pretrained", default="openai", help="open_clip weights tag")
    text.add_argument(
        "--text-weights", metavar="FILE", help="weights file instead of the tag's cached weights"
    )
    text.add_argument(
        "--text-config",
        metavar="JSON",
        type=Path,
        help="an open_clip CLIP config file: a randomly initialised tower",
    )
    text.add_argument(
        "--text-init",
        choices=("words",),
        help="with --text-config: bag-of-words init of the random tower (tests)",
    )
    text.add_argument("--no-text-download", action="store_true", help="never download: use the cache or fail")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch-size", type=int, default=128, help="pairs per step and device")
    optim.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (constant)")
    optim.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    optim.add_argument("--epochs", type=int, default=1, help="epochs over the captions (unless --max-steps)")
    optim.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    optim.add_argument(
        "--hidden-dim", type=int, help="width of the mapping's tanh layer (default: backbone dim)"
    )
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, type=Path, help="run folder")
    run.add_argument(
        "--accelerator", default="auto", choices=("auto", "cpu", "gpu"), help="auto: gpu when available"
    )
    run.add_argument("--devices", default="auto", help="devices per node (auto: every GPU)")
    run.add_argument("--strategy", default="auto", choices=("auto", "ddp"), help="ddp for several devices")
    run.add_argument("--num-nodes", type=int, default=1, help="nodes (SLURM / torchrun)")
    run.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"), help="auto: bf16 on GPU"
    )
    run.add_argument("--num-workers", type=int, default=4, help="data loader workers")
    run.add_argument("--seed", type=int, default=0, help="seed of the data order and the mapping's init")
    run.add_argument("--ckpt-every-steps", type=int, default=500, help="save a checkpoint every N steps")
    run.add_argument("--keep-checkpoints", type=int, default=3, help="newest step checkpoints kept")
    run.add_argument("--log-every", type=int, default=10, help="log the loss every N steps (csv logger)")
    run.add_argument("--stop-at-step", type=int, help="stop (resumably) at this step")
    run.add_argument(
        "--resume", metavar="auto|CKPT", help="continue a run: auto (the --out run's last.ckpt) or a file"
    )
    run.add_argument(
        "--overwrite", action="store_true", help="delete the --out run's checkpoints and start again"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from neco.training.text_align import TextAlignConfig, train_text_align

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
    devices = args.devices if args.devices == "auto" else int(args.devices)
    config = TextAlignConfig(
        data_root=str(args.data_root),
        out_dir=str(args.out),
        layout=args.layout,
        split=args.split,
        backbone=args.backbone,
        weights=args.weights,
        text_model=args.text_model,
        text_pretrained=args.text_pretrained,
        text_weights=args.text_weights,
        text_config=text_config,
        text_init=args.text_init,
        text_download=not args.no_text_download,
        input_size=args.input_size,
        cache_features=not args.no_cache_features,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        epochs=args.epochs,
        max_steps=args.max_steps,
        hidden_dim=args.hidden_dim,
        accelerator=args.accelerator,
        devices=devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=args.precision,
        num_workers=args.num_workers,
        seed=args.seed,
        ckpt_every_steps=args.ckpt_every_steps,
        keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every,
        stop_at_step=args.stop_at_step,
        progress=not args.no_progress,
        which=args.which,
    )
    result = train_text_align(config, resume=args.resume, overwrite=args.overwrite)
    state = "stopped" if result.interrupted else "finished"
    loss = result.metrics.get("loss")
    shown = "n/a" if loss is None else f"{loss:.4f}"
    print(f"text-align {state} at step {result.global_step} (loss {shown}) -> {result.last_checkpoint}")
    return 0
