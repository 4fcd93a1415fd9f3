"""`neco text-align`: train Talk2DINO's text-to-patch mapping on image-caption pairs (backbone and text frozen)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from neco.commands._backbone import BACKBONE_HELP, BackboneSettings
from neco.evaluation.options import add_command, option

__all__ = ["TextAlignSettings", "register"]

_DATA, _TEXT, _OPTIM, _RUN = "data", "text encoder (open_clip)", "optimisation", "run"


@dataclass(kw_only=True)
class TextAlignSettings(BackboneSettings):
    """The options of `neco text-align` (`TextAlignConfig` keys, plus the run's resume and overwrite)."""

    backbone: str = option("dinov2_vitb14_reg", BACKBONE_HELP, metavar="NAME|CHECKPOINT")
    data_root: Path = option(help="caption dataset root", group=_DATA)
    layout: str = option("coco", "caption dataset layout", choices=("coco", "folder"), group=_DATA)
    split: str = option("train2017", "COCO Captions split (annotations/captions_SPLIT.json)", group=_DATA)
    input_size: int = option(448, "square image side in pixels", group=_DATA)
    cache_features: bool = option(
        True,
        "cache each image's pooled features once (--no-cache-features: run the backbone at every step)",
        group=_DATA,
    )
    text_model: str = option("ViT-B-16", "open_clip model name", group=_TEXT)
    text_pretrained: str = option("openai", "open_clip weights tag", group=_TEXT)
    text_weights: str | None = option(
        None, "weights file instead of the tag's cached weights", metavar="FILE", group=_TEXT
    )
    text_config: Path | None = option(
        None, "an open_clip CLIP config file: a randomly initialised tower", metavar="JSON", group=_TEXT
    )
    text_init: str | None = option(
        None,
        "with --text-config: bag-of-words init of the random tower (tests)",
        choices=("words",),
        group=_TEXT,
    )
    text_download: bool = option(
        True, "download missing weights (--no-text-download: use the cache or fail)", group=_TEXT
    )
    batch_size: int = option(128, "pairs per step and device", group=_OPTIM)
    lr: float = option(1e-4, "AdamW learning rate (constant)", group=_OPTIM)
    weight_decay: float = option(0.0, "AdamW weight decay", group=_OPTIM)
    epochs: int = option(1, "epochs over the captions (unless --max-steps)", group=_OPTIM)
    max_steps: int | None = option(None, "optimizer steps (overrides --epochs)", group=_OPTIM)
    hidden_dim: int | None = option(
        None, "width of the mapping's tanh layer (default: backbone dim)", group=_OPTIM
    )
    out: Path = option(help="run folder", group=_RUN)
    accelerator: str = option("auto", "auto: gpu when available", choices=("auto", "cpu", "gpu"), group=_RUN)
    devices: str = option("auto", "devices per node (auto: every GPU)", group=_RUN)
    strategy: str = option("auto", "ddp for several devices", choices=("auto", "ddp"), group=_RUN)
    num_nodes: int = option(1, "nodes (SLURM / torchrun)", group=_RUN)
    precision: str = option("auto", "auto: bf16 on GPU", choices=("auto", "fp32", "bf16"), group=_RUN)
    num_workers: int = option(4, "data loader workers", group=_RUN)
    seed: int = option(0, "seed of the data order and the mapping's init", group=_RUN)
    ckpt_every_steps: int = option(500, "save a checkpoint every N steps", group=_RUN)
    keep_checkpoints: int = option(3, "newest step checkpoints kept", group=_RUN)
    log_every: int = option(10, "log the loss every N steps (csv logger)", group=_RUN)
    stop_at_step: int | None = option(None, "stop (resumably) at this step", group=_RUN)
    resume: str | None = option(
        None, "continue a run: auto (the --out run's last.ckpt) or a file", metavar="auto|CKPT", group=_RUN
    )
    overwrite: bool = option(False, "delete the --out run's checkpoints and start again", group=_RUN)
    progress: bool = option(True, "progress bar", group=_RUN)


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
    keys = {f.name for f in dataclasses.fields(TextAlignConfig)}
    config = TextAlignConfig(
        **{
            **{k: v for k, v in dataclasses.asdict(args).items() if k in keys},
            "data_root": str(args.data_root),
            "out_dir": str(args.out),
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
