"""Does fine-tuning end to end beat the frozen linear probe of the same start on the demo's scenes?

On the demo's generated scenes (200 train / 60 val, 96 px, seed 0), from the shipped start
(`vit_tiny_scenes`), for each seed: `neco eval linear` with the demo's probe settings (frozen
features) and `neco eval finetune --decoder linear` with `--iterations` sized to fit a 5 CPU-minute
budget. Each command runs as its own process (`--parallel` at once); its CPU time (user + sys of the
process and its threads) and wall time are recorded with the machine's load average before and after.

Example:
  python benchmarks/finetune_scenes.py --out runs/finetune_scenes --seeds 0 1 2 \
      --results benchmarks/results/finetune_scenes.json
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--ratio-range", type=float, nargs=2, default=[0.5, 2.0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command")
    parser.add_argument("--parallel", type=int, default=1, help="commands run at once")
    parser.add_argument("--results", type=Path, help="write the raw results JSON here")
    return parser.parse_args(argv)


def _run_all(jobs: list[tuple[str, list[str], Path]], parallel: int) -> dict[str, dict[str, Any]]:
    """Run the commands, at most `parallel` at once; per command its own CPU seconds (user + sys of the
    process and its threads, from `wait4`), wall seconds and the 1-minute load when it started and ended."""
    pending, running, done = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            key, command, log = pending.pop(0)
            handle = open(log, "w")  # noqa: SIM115 - closed when the process is reaped
            proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
            running[proc.pid] = (key, command, handle, time.perf_counter(), os.getloadavg()[0])
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        key, command, handle, start, load = running.pop(pid)
        handle.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(command)} failed; see {handle.name}")
        done[key] = {
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "wall_s": time.perf_counter() - start,
            "load_before": load,
            "load_after": os.getloadavg()[0],
        }
        print(f"{key}: cpu {done[key]['cpu_s']:.0f} s, wall {done[key]['wall_s']:.0f} s", flush=True)
    return done


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
    finetune += ["--ratio-range", *map(str, args.ratio_range)]
    jobs = []
    for seed in args.seeds:
        for arm, extra in (("linear", LINEAR), ("finetune", finetune)):
            out = args.out / f"{arm}_seed{seed}"
            command = [*neco, arm, *shared, *extra, "--seed", str(seed), "--out", str(out)]
            if arm == "finetune":
                command += ["--overwrite"]  # a rerun starts again (the earlier run's checkpoints are deleted)
            jobs.append((f"{arm}_seed{seed}", command, args.out / f"{arm}_seed{seed}.log"))
    timings = _run_all(jobs, args.parallel)
    runs: list[dict[str, Any]] = []
    for key, command, _ in jobs:
        arm, seed = key.split("_seed")
        result = json.loads((args.out / key / f"{arm}.json").read_text())
        runs.append({"arm": arm, "seed": int(seed), "miou": result["metrics"]["miou"], **timings[key],
                     "command": ["neco", "eval", *command[4:]],
                     "per_class_iou": result["metrics"]["per_class_iou"],
                     "training": result["metrics"].get("training")})  # fmt: skip
        print(f"{arm:8s} seed {seed}: mIoU {runs[-1]['miou']:.2f}", flush=True)
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
