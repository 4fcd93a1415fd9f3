"""Shared settings of the tiny training runs in these tests: the preset and the smallest overrides."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "tiny_cpu.yaml"
# Smallest settings that still exercise every part: 4x4 / 2x2 token grids, 3x3 ROI grids, 2 images.
FAST = [
    "data.batch_size=2",
    "data.crops.global_size=32",
    "data.crops.local_size=16",
    "data.crops.num_local=2",
    "loss.roi_size=3",
    "loss.queue_size=32",
    "model.head_hidden_dim=64",
    "model.head_out_dim=32",
    "data.synthetic_images=8",
    "data.synthetic_size=48",
    "run.loggers=[csv]",
    "run.progress=false",
    "run.log_every=1",
]


def write_small_scenes(folder: Path) -> Path:
    """8 training and 4 validation scenes of 48 px."""
    from neco.data.synthetic import write_scenes

    return write_scenes(folder, num_train=8, num_val=4, size=48, progress=False)


# Module-level tests (no Lightning run): batch references, tiny head, no drop-path.
SMALL = [
    "data.crops.global_size=32",
    "data.crops.local_size=16",
    "data.crops.num_local=2",
    "loss.roi_size=3",
    "loss.reference_mode=batch",
    "model.head_hidden_dim=32",
    "model.head_out_dim=16",
    "model.drop_path_rate=0.0",
]
