"""Size of a ViT-S training checkpoint: the file, its unique tensor bytes, and what each part holds.

Runs one `neco train` step of a ViT-S/14 preset on CPU (random init: `model.pretrained=false`, no
download; tiny crops and generated scenes, so the step takes seconds) through the trainer's own
checkpoint code path, then reads the step file back and reports:

  file_bytes             size of the step file on disk
  unique_storage_bytes   bytes of every distinct tensor storage in the file (each counted once)
  referenced_bytes       bytes of every tensor *reference* (shared storages counted each time): what
                         a file holds when neco's student / teacher / head / queue entries are copies
                         instead of views of Lightning's state dict (the layout before issue 18 item 13)
  copies_file_bytes      that layout measured: the same checkpoint saved with those entries cloned
  breakdown              bytes of the student and teacher backbones, the heads, the queue, the AdamW
                         moments and the rest

Example:
  python benchmarks/checkpoint_size.py --out benchmarks/results/checkpoint_size.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
NECO_ENTRIES = ("student", "teacher", "student_head", "teacher_head", "queue")
# One step on CPU: tiny crops (4x4 / 2x2 patch grids of 14 px), 2 images; the networks, heads, queue
# and optimizer are the preset's, so the checkpoint has the size of a real run's.
TINY = [
    "model.pretrained=false",
    "data.kind=synthetic",
    "data.synthetic_images=4",
    "data.synthetic_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.crops.global_size=56",
    "data.crops.local_size=28",
    "loss.roi_size=2",
    "optim.max_steps=1",
    "run.ckpt_every_steps=1",
    "run.accelerator=cpu",
    "run.devices=1",
    "run.precision=fp32",
    "run.loggers=[csv]",
    "run.progress=false",
]


def _tensors(tree: Any) -> list[torch.Tensor]:
    """Every tensor in a nested checkpoint (dicts, lists, tuples)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for value in tree.values() for t in _tensors(value)]
    if isinstance(tree, list | tuple):
        return [t for value in tree for t in _tensors(value)]
    return []


def _storages(tensors: list[torch.Tensor]) -> dict[int, int]:
    """{storage pointer: storage bytes} of `tensors` (a shared storage once)."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def _bytes(tree: Any) -> int:
    return sum(_storages(_tensors(tree)).values())


def _params(tree: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in tree.values())


def measure(config: str, out_dir: Path) -> dict[str, Any]:
    """Train one step into `out_dir` and measure its checkpoint."""
    from neco.training.config import load_config
    from neco.training.run import train

    start = time.perf_counter()
    result = train(load_config(config, [*TINY, f"run.out_dir={out_dir}"]))
    seconds = time.perf_counter() - start
    path = result.last_checkpoint
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    moments = [t for state in checkpoint["optimizer_states"][0]["state"].values() for t in state.values()]
    everything = _tensors(checkpoint)
    unique = sum(_storages(everything).values())
    referenced = sum(t.untyped_storage().nbytes() for t in everything)
    in_state_dict = _bytes(checkpoint["state_dict"])
    parts = {key: _bytes(checkpoint[key]) for key in NECO_ENTRIES}
    breakdown = {
        **{f"{key}_bytes": value for key, value in parts.items()},
        "optimizer_moments_bytes": _bytes(moments),
        "lightning_state_dict_bytes": in_state_dict,
        "other_bytes": unique - in_state_dict - _bytes(moments),
    }
    copies = dict(checkpoint)
    for key in NECO_ENTRIES:
        copies[key] = {k: v.clone() for k, v in checkpoint[key].items()}
    with tempfile.NamedTemporaryFile(suffix=".ckpt", dir=out_dir) as handle:
        torch.save(copies, handle.name)
        copies_bytes = os.path.getsize(handle.name)
    return {
        "backbone": checkpoint["backbone"],
        "config": config,
        "overrides": TINY,
        "checkpoint": path.name,
        "file_bytes": path.stat().st_size,
        "unique_storage_bytes": unique,
        "referenced_bytes": referenced,
        "copies_file_bytes": copies_bytes,
        "breakdown": breakdown,
        "parameters": {
            "student_backbone": _params(checkpoint["student"]),
            "student_head": _params(checkpoint["student_head"]),
        },
        "train_seconds": round(seconds, 1),
        "shares_storage": all(
            set(_storages(_tensors(checkpoint[key]))) <= set(_storages(_tensors(checkpoint["state_dict"])))
            for key in NECO_ENTRIES
        ),
    }


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=str(ROOT / "configs" / "small" / "neco_dinov2.yaml"), help="ViT-S preset"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the result (default: print)")
    parser.add_argument("--work-dir", type=Path, default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()
    before = _uptime()
    with tempfile.TemporaryDirectory() as scratch:
        result = measure(args.config, args.work_dir or Path(scratch) / "run")
    result["machine"] = {
        "uptime_before": before,
        "uptime_after": _uptime(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
