"""Does fine-tuning end to end beat the frozen linear probe of the same start on the demo's scenes?

On the demo's generated scenes (200 train / 60 val, 96 px, seed 0), from the shipped start
(`vit_tiny_scenes`), for each seed: `neco eval linear` with the demo's probe settings (frozen
features) and `neco eval finetune --decoder linear` with `--iterations` sized to fit a 5 CPU-minute
budget. Each command runs as its own process; its CPU time (user + sys of the process and its
threads) and wall time are recorded with the machine's load average before and after.

Example:
  python benchmarks/finetune_scenes.py --out runs/finetune_scenes --seeds 0 1 2 \
      --results benchmarks/results/finetune_scenes.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# the demo's probe (src/neco/demo/run.py): lr 1.0, 20 epochs, cached features, batch 8, target 96
LINEAR = ["--epochs", "20", "--lr", "1.0", "--lr-step-epoch", "16", "--probe-batch-size", "8"]
LINEAR += ["--target-size", "96", "--train-features", "cached"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/finetune_scenes"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--decoder-lr-scale", type=float, default=100.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, help="write the raw results JSON here")
    return parser.parse_args(argv)


def _timed(command: list[str], log: Path) -> dict[str, Any]:
    """Run `command`, returning its CPU seconds (children's user + sys), wall seconds and the load around it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": cpu, "wall_s": wall, "load_before": load_before, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    """Run both arms for every seed and print the table."""
    args = _parse(argv)
    from neco.data.synthetic import write_scenes

    scenes = write_scenes(args.out / "scenes", 200, 60, 96, seed=0, progress=False)
    neco = [sys.executable, "-m", "neco.cli", "eval"]
    shared = ["--dataset", "scenes", "--data-root", str(scenes), "--backbone", "vit_tiny_scenes"]
    shared += ["--input-size", "96", "--num-workers", "0", "--threads", str(args.threads), "--no-progress"]
    shared += ["--device", "cpu", "--num-figures", "2"]
    finetune = ["--decoder", "linear", "--iterations", str(args.iterations), "--lr", str(args.lr)]
    finetune += ["--decoder-lr-scale", str(args.decoder_lr_scale), "--ckpt-every", str(args.iterations)]
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for arm, extra in (("linear", LINEAR), ("finetune", finetune)):
            out = args.out / f"{arm}_seed{seed}"
            command = [*neco, arm, *shared, *extra, "--seed", str(seed), "--out", str(out)]
            if arm == "finetune" and (out / "checkpoints").exists():
                command += ["--overwrite"]
            timing = _timed(command, args.out / f"{arm}_seed{seed}.log")
            result = json.loads((out / f"{arm}.json").read_text())
            runs.append({"arm": arm, "seed": seed, "miou": result["metrics"]["miou"], **timing,
                         "command": ["neco", "eval", *command[4:]],
                         "per_class_iou": result["metrics"]["per_class_iou"],
                         "training": result["metrics"].get("training")})  # fmt: skip
            print(f"{arm:8s} seed {seed}: mIoU {runs[-1]['miou']:.2f}  cpu {timing['cpu_s']:.0f} s  "
                  f"wall {timing['wall_s']:.0f} s  load {timing['load_before']:.1f}", flush=True)  # fmt: skip
    summary = {}
    for arm in ("linear", "finetune"):
        values = [r["miou"] for r in runs if r["arm"] == arm]
        summary[arm] = {
            "miou_mean": statistics.mean(values),
            "miou_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "cpu_s_max": max(r["cpu_s"] for r in runs if r["arm"] == arm),
        }
    gains = [f["miou"] - lin["miou"] for lin, f in zip(runs[::2], runs[1::2])]
    summary["gain_per_seed"] = gains
    print(json.dumps(summary, indent=1))
    if args.results:
        payload = {"benchmark": "finetune_scenes", "cpu_count": os.cpu_count(), "runs": runs, "summary": summary,
                   "settings": vars(args) | {"out": str(args.out), "results": str(args.results)}}  # fmt: skip
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
