"""Fixtures shared across test folders (a sibling-module import works only within one folder)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from neco.cli import main
from neco.method.text_encoder import tiny_text_config


@pytest.fixture(scope="session")
def run_text_align() -> Callable[..., int]:
    """`run(captions, out, *options)`: `neco text-align` on a COCO-layout caption root with the tiny random
    text tower (its config written beside `out`) and the tiny scene backbone; returns the exit code."""

    def run(captions: Path, out: Path, *options: str) -> int:
        config = out.parent / "tower.json"
        config.write_text(json.dumps(tiny_text_config(width=32)))
        threads = torch.get_num_threads()
        try:
            return main(
                [
                    "text-align",
                    "--data-root",
                    str(captions),
                    "--layout",
                    "coco",
                    "--backbone",
                    "vit_tiny_scenes",
                ]
                + ["--text-config", str(config), "--text-init", "words", "--input-size", "32"]
                + ["--batch-size", "4", "--num-workers", "0", "--out", str(out), *options]
                + ["--threads", "1", "--no-progress", "--accelerator", "cpu"]
            )
        finally:
            torch.set_num_threads(threads)  # --threads 1 must not slow the tests that follow

    return run
