"""`benchmarks/checkpoint_size.py` on the tiny preset: the step file holds each weight once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "checkpoint_size", ROOT / "benchmarks" / "checkpoint_size.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_checkpoint_size_breakdown_adds_up(tmp_path: Path) -> None:
    result = _script().measure(str(ROOT / "configs" / "tiny_cpu.yaml"), tmp_path / "run")
    parts = result["breakdown"]
    assert result["backbone"] == "vit_tiny" and result["shares_storage"]
    # The file is the unique storages (plus pickle framing), far below the layout with copies.
    assert (
        result["unique_storage_bytes"]
        <= result["file_bytes"]
        < 1.01 * result["unique_storage_bytes"] + 200_000
    )
    copied = sum(parts[f"{k}_bytes"] for k in ("student", "teacher", "student_head", "teacher_head", "queue"))
    assert result["referenced_bytes"] - result["unique_storage_bytes"] == copied
    assert result["copies_file_bytes"] > result["file_bytes"] + 0.99 * copied
    # AdamW keeps two moments of every trainable student tensor (the mask token is frozen).
    trainable = 4 * sum(result["parameters"].values())
    assert 1.98 * trainable <= parts["optimizer_moments_bytes"] <= 2.02 * trainable
