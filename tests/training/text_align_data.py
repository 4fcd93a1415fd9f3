"""Shared data of the text-align tests: tinted scenes, their captions and a trained tiny mapping."""

from __future__ import annotations

from pathlib import Path

from neco.method.text_encoder import tiny_text_config

SIZE = 64
TEXT_CONFIG = tiny_text_config(width=64)


def write_caption_scenes(root: Path, layout: str = "folder", num_train: int = 64) -> tuple[Path, Path]:
    """(tinted scenes output, caption dataset of its training scenes) under `root`."""
    from neco.data.captions import tint_scenes, write_scene_captions
    from neco.data.synthetic import write_scenes

    raw = write_scenes(root / "raw", num_train=num_train, num_val=16, size=SIZE, progress=False)
    scenes = tint_scenes(raw, root / "scenes")
    return scenes, write_scene_captions(scenes, root / f"captions_{layout}", layout)


def config(captions: Path, out: Path, layout: str = "folder", **overrides):
    """A tiny CPU text-align config over `captions` (vit_tiny_scenes, 64-wide bag-of-words text tower)."""
    from neco.training.text_align import TextAlignConfig

    settings = {
        "data_root": str(captions),
        "out_dir": str(out),
        "layout": layout,
        "backbone": "vit_tiny_scenes",
        "text_config": TEXT_CONFIG,
        "text_init": "words",
        "input_size": SIZE,
        "batch_size": 64,
        "lr": 1e-2,
        "max_steps": 100,
        "num_workers": 0,
        "progress": False,
        "log_every": 1,
        "ckpt_every_steps": 50,
        "loggers": ["csv"],
    }
    return TextAlignConfig(**{**settings, **overrides})
