"""The settings of a `neco text-align` run: one typed dataclass whose fields also declare the command's options.

Kept apart from `neco.training.text_align` so that building the `neco` command line does not import
Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from neco.data.captions import CAPTION_LAYOUTS
from neco.method.text_encoder import DEFAULT_TEXT_MODEL
from neco.utils.settings import option, validate

__all__ = ["TextAlignConfig"]

_DATA, _TEXT, _OPTIM, _RUN = "data", "text encoder (open_clip)", "optimisation", "run"


@dataclass(kw_only=True)
class TextAlignConfig:
    """Every setting of a text-align run, checked when made; errors name the `neco text-align` flag."""

    # the command declares these three with the other commands' backbone options (`neco.commands._backbone`)
    backbone: str = option("dinov2_vitb14_reg", cli=False)
    weights: str | None = option(None, cli=False)
    which: str = option("teacher", cli=False)
    data_root: str = option(help="caption dataset root", group=_DATA)
    layout: str = option("coco", "caption dataset layout", choices=tuple(CAPTION_LAYOUTS), group=_DATA)
    split: str = option("train2017", "COCO Captions split (annotations/captions_SPLIT.json)", group=_DATA)
    input_size: int = option(448, "square image side in pixels", minimum=1, group=_DATA)
    cache_features: bool = option(
        True,
        "cache each image's pooled features once (--no-cache-features: run the backbone at every step)",
        group=_DATA,
    )
    text_model: str = option(DEFAULT_TEXT_MODEL["model"], "open_clip model name", group=_TEXT)
    text_pretrained: str | None = option(
        DEFAULT_TEXT_MODEL["pretrained"], "open_clip weights tag", group=_TEXT
    )
    text_weights: str | None = option(
        None, "weights file instead of the tag's cached weights", metavar="FILE", group=_TEXT
    )
    # an open_clip CLIP config (tests: a tiny random tower); the command reads it from a JSON file
    text_config: dict[str, Any] | None = option(None, cli=False)
    text_init: str | None = option(
        None,
        "with --text-config: bag-of-words init of the random tower (tests)",
        choices=("words",),
        group=_TEXT,
    )  # "words": see `neco.method.text_encoder.words_init` (config towers only)
    text_download: bool = option(
        True, "download missing weights (--no-text-download: use the cache or fail)", group=_TEXT
    )
    batch_size: int = option(128, "pairs per step and device", group=_OPTIM)
    lr: float = option(
        1e-4, "AdamW learning rate (constant)", minimum=0, exclusive_minimum=True, group=_OPTIM
    )
    weight_decay: float = option(0.0, "AdamW weight decay", minimum=0, group=_OPTIM)
    epochs: int = option(1, "epochs over the captions (unless --max-steps)", minimum=1, group=_OPTIM)
    max_steps: int | None = option(None, "optimizer steps (overrides --epochs)", minimum=1, group=_OPTIM)
    hidden_dim: int | None = option(
        None, "width of the mapping's tanh layer (default: backbone dim)", group=_OPTIM
    )
    init_temperature: float = option(0.07, cli=False)
    out_dir: str = option(help="run folder", flag="--out", metavar="OUT", group=_RUN)
    accelerator: str = option("auto", "auto: gpu when available", choices=("auto", "cpu", "gpu"), group=_RUN)
    devices: int | str = option("auto", "devices per node (auto: every GPU)", group=_RUN)
    strategy: str = option("auto", "ddp for several devices", choices=("auto", "ddp"), group=_RUN)
    num_nodes: int = option(1, "nodes (SLURM / torchrun)", minimum=1, group=_RUN)
    precision: str = option("auto", "auto: bf16 on GPU", choices=("auto", "fp32", "bf16"), group=_RUN)
    num_workers: int = option(4, "data loader workers", group=_RUN)
    seed: int = option(0, "seed of the data order and the mapping's init", group=_RUN)
    ckpt_every_steps: int = option(500, "save a checkpoint every N steps", minimum=1, group=_RUN)
    keep_checkpoints: int = option(3, "newest step checkpoints kept", minimum=1, group=_RUN)
    log_every: int = option(10, "log the loss every N steps (csv logger)", minimum=1, group=_RUN)
    stop_at_step: int | None = option(None, "stop (resumably) at this step", minimum=1, group=_RUN)
    progress: bool = option(True, "progress bar", group=_RUN)
    # no flag: messages name the keyword itself (`loggers`), checked item by item by `validate`
    loggers: list[str] = option(["csv"], choices=("csv", "tensorboard"), flag="loggers", cli=False)

    def __post_init__(self) -> None:
        validate(self)

    def check(self) -> None:
        """Rules beyond each field's bounds and choices (called by `validate`)."""
        if self.batch_size < 2:
            raise ValueError(f"`--batch-size` must be >= 2 (in-batch negatives) but is {self.batch_size}")
        if self.accelerator == "gpu" and not torch.cuda.is_available():
            raise ValueError("`--accelerator` is 'gpu' but no CUDA device is available; use 'cpu' or 'auto'")

    def text_spec(self) -> dict[str, Any]:
        """The text encoder spec (`TextEncoder.from_spec`)."""
        if self.text_config is not None:
            return {"config": self.text_config, "init": self.text_init}
        return {"model": self.text_model, "pretrained": self.text_pretrained, "weights": self.text_weights}
