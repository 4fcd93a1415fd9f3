"""Largest student |weight| per saved step of a tiny-preset run: how a sound run and a diverging one differ.

The yardstick behind `WEIGHT_GROWTH_LIMIT` (docs/training.md, "After a divergence"): every checkpoint
records `health.weight_max`; a run at a learning rate that diverges is compared with a sound one.

  python benchmarks/weight_growth.py --lr 1e-4 1000 --steps 50 --out benchmarks/results/weight_growth.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from faults import FAST, PRESET  # noqa: E402  (the same tiny settings as the fault trials)


def run_one(work: Path, scenes: Path, lr: float, steps: int) -> dict[str, Any]:
    """Train at `lr` (backbone and head) with a checkpoint per step; the weight maxima and how it ended."""
    from neco.training.config import load_config
    from neco.training.run import train

    out = work / f"lr{lr:g}"
    overrides = [*FAST, f"data.root={scenes}", f"run.out_dir={out}", f"optim.max_steps={steps}"]
    overrides += ["run.keep_checkpoints=1000", f"optim.lr_backbone={lr}", f"optim.lr_head={lr}"]
    ended = "finished"
    try:
        train(load_config(PRESET, overrides))
    except FloatingPointError as err:
        ended = f"{type(err).__name__} at step {getattr(err, 'step', '?')}"
    maxima = {}
    for path in sorted((out / "checkpoints").glob("*step_*.ckpt")):
        health = torch.load(path, map_location="cpu", weights_only=True)["health"]
        maxima[path.name] = health["weight_max"]
        start = health["start_weight_max"]
    return {"lr": lr, "ended": ended, "start_weight_max": start, "weight_max": maxima}


def main() -> None:
    """Run each learning rate and write the maxima as JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-4, 1000.0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from neco.data.synthetic import write_scenes

    torch.set_num_threads(1)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="neco_growth_"))
    scenes = write_scenes(work / "scenes", num_train=8, num_val=4, size=48, progress=False)
    runs = [run_one(work, scenes, lr, args.steps) for lr in args.lr]
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "weight_growth",
        "settings": {"steps": args.steps, "overrides": FAST},
        "machine": {"cpus": os.cpu_count(), "load_average_end": list(os.getloadavg()), "threads": 1},
        "seconds": time.time() - started,
        "runs": runs,
    }
    for run in runs:
        values = list(run["weight_max"].values())
        print(
            f"lr {run['lr']:g}: {run['ended']}; max |w| start {run['start_weight_max']:.4g}, saved {values[:3]} ... {values[-1:]}"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
