"""Does NeCo post-training improve its starting backbone? The long version of `neco demo`.

From one starting backbone (default: the shipped `vit_tiny_scenes`), NeCo post-trains on the
generated scenes for `--steps` steps with each of `--train-seeds`, keeping a checkpoint every
`--eval-every` steps. The start and every checkpoint (the teacher) are evaluated with the demo's
protocols over `--eval-seeds` on the same scenes. The table reports, per step, the mean over
training seeds of the per-run mean over evaluation seeds, both spreads (std over training seeds of
those means; mean std over evaluation seeds), the gain over the larger of the two, and how many of
the paired differences (same evaluation seed before and after) are positive.

Examples:
  python benchmarks/synthetic_gain.py --out runs/gain                         # CPU hours
  python benchmarks/synthetic_gain.py --out runs/gain --steps 600 --eval-every 200 \
      --train-seeds 0 1 2 --set optim.lr_backbone=1e-4 loss.roi_size=7

Rerunning with the same `--out` reuses the scenes, finished training runs (resumed from their last
checkpoint) and every evaluation already stored in `gain.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/synthetic_gain"))
    parser.add_argument("--backbone", default="vit_tiny_scenes", help="starting backbone (registry name)")
    parser.add_argument("--weights", default=None, help="starting weights file (default: the registry's)")
    parser.add_argument("--steps", type=int, default=3000, help="NeCo steps per training seed")
    parser.add_argument("--eval-every", type=int, default=1000, help="evaluate a checkpoint every N steps")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--protocols", nargs="+", default=["hummingbird", "overcluster", "linear"], help="demo protocols"
    )
    parser.add_argument("--num-train", type=int, default=200, help="training scenes (NeCo and memory bank)")
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--lr", type=float, default=2e-4, help="backbone learning rate (demo default)")
    parser.add_argument("--ema", type=float, default=0.99, help="EMA momentum start (demo default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: library default)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="further training-config overrides"
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _run_key(args: argparse.Namespace, seed: int) -> str:
    """Identifies a training run by everything that changes it (reruns with other settings don't mix)."""
    fields = [args.backbone, args.weights, args.steps, args.eval_every, args.num_train, args.image_size,
              args.lr, args.ema, args.batch_size, sorted(args.set), seed]
    return hashlib.sha1(json.dumps(fields, default=str).encode()).hexdigest()[:10]


def _std(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def _rows(protocol: str, before: list[float], per_step: dict[int, dict[str, list[list[float]]]]) -> list[dict]:
    """One row per step: mean, both spreads, gain, gain over the larger spread, paired differences."""
    start_std = _std(before)
    rows = [{
        "protocol": protocol, "step": 0, "mean": statistics.fmean(before), "std_train": None,
        "std_eval": start_std, "gain": 0.0, "gain_over_spread": None, "paired_positive": None, "runs": 1,
    }]
    for step in sorted(per_step):
        runs = per_step[step][protocol]  # per training seed: the per-eval-seed scores
        means = [statistics.fmean(r) for r in runs]
        gain = statistics.fmean(means) - statistics.fmean(before)
        std_train = _std(means) if len(means) > 1 else None
        std_eval = statistics.fmean([_std(r) for r in runs] + [start_std])
        # Conservative: the larger of the training-seed and evaluation-seed spreads.
        spread = max(std_train or 0.0, std_eval)
        # Same evaluation seed before and after: the paired differences say whether the gain is systematic.
        paired = [a - b for r in runs for a, b in zip(r, before)]
        rows.append({
            "protocol": protocol, "step": step, "mean": statistics.fmean(means), "std_train": std_train,
            "std_eval": std_eval, "gain": gain, "gain_over_spread": gain / spread if spread > 1e-3 else None,
            "paired_positive": f"{sum(d > 0 for d in paired)}/{len(paired)}", "runs": len(runs),
        })
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| protocol | step | mIoU | std (train seeds) | std (eval seeds) | gain | gain / larger std | paired gains > 0 | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r["gain_over_spread"] is None else f"{r['gain_over_spread']:+.1f}"
        train = "" if r["std_train"] is None else f"{r['std_train']:.2f}"
        lines.append(
            f"| {r['protocol']} | {r['step']} | {r['mean']:.2f} | {train} | {r['std_eval']:.2f} | {r['gain']:+.2f} "
            f"| {ratio} | {r['paired_positive'] or ''} | {r['runs']} |"
        )
    return "\n".join(lines)


def _save_merged(store: dict[str, Any], path: Path) -> None:
    """Write `store`, keeping evaluations another process (e.g. one per training seed) wrote meanwhile."""
    from neco.utils.io import write_json

    if path.is_file():
        on_disk = json.loads(path.read_text()).get("evaluations", {})
        for key, scores in on_disk.items():
            store["evaluations"].setdefault(key, {}).update(
                {p: v for p, v in scores.items() if p not in store["evaluations"][key]}
            )
    write_json(store, path)


def main(argv: list[str] | None = None) -> int:
    """Post-train from one start over several seeds and tabulate the gain per protocol and step."""
    args = _parse(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from neco.backbones import create
    from neco.data import build_segmentation_dataset
    from neco.data.synthetic import write_scenes
    from neco.demo.run import DemoConfig, evaluate_backbone, train_config
    from neco.training.run import train
    from neco.utils.io import ensure_writable_dir

    out = ensure_writable_dir(args.out, "--out")
    progress = not args.no_progress
    cfg = DemoConfig(
        out=str(out), backbone=args.backbone, weights=args.weights, num_train=args.num_train,
        num_val=args.num_val, image_size=args.image_size, eval_seeds=tuple(args.eval_seeds),
        batch_size=args.batch_size, lr_backbone=args.lr, ema_momentum=args.ema, progress=progress,
    )
    protocols = tuple(args.protocols)
    scenes = write_scenes(out / "scenes", args.num_train, args.num_val, args.image_size, seed=0, progress=progress)
    train_set = build_segmentation_dataset("scenes", scenes, "train")
    val_set = build_segmentation_dataset("scenes", scenes, "val")
    store_path = out / "gain.json"
    store: dict[str, Any] = json.loads(store_path.read_text()) if store_path.is_file() else {}
    evaluations: dict[str, Any] = store.setdefault("evaluations", {})

    def evaluated(key: str, model_fn: Any) -> dict[str, list[float]]:
        key = f"{key}|eval_seeds={','.join(map(str, args.eval_seeds))}"  # per-seed lists must match the seeds
        cached = evaluations.get(key, {})
        missing = tuple(p for p in protocols if p not in cached)
        if missing:
            scores = evaluate_backbone(model_fn(), train_set, val_set, cfg, key, missing)["scores"]
            cached.update({p: scores[p]["miou_per_seed"] for p in missing})
            evaluations[key] = cached
            _save_merged(store, store_path)
        return cached

    start_key = f"start:{args.backbone}:{args.weights}"
    before = evaluated(start_key, lambda: create(args.backbone, pretrained=args.weights is None, weights=args.weights))
    per_step: dict[int, dict[str, list[list[float]]]] = {}  # step -> protocol -> per run, per eval seed
    seconds: dict[int, float] = {}
    for seed in args.train_seeds:
        run_dir = out / f"run_seed{seed}_{_run_key(args, seed)}"
        overrides = (
            f"run.seed={seed}", f"run.ckpt_every_steps={args.eval_every}", "run.keep_checkpoints=100000",
            *args.set,
        )
        t0 = time.perf_counter()
        train(train_config(cfg, scenes, run_dir, args.steps, args.weights, overrides), resume="auto", progress=progress)
        seconds[seed] = time.perf_counter() - t0
        for ckpt in sorted((run_dir / "checkpoints").glob("step_*.ckpt")):
            step = int(ckpt.stem.split("_")[1])
            if step % args.eval_every and step != args.steps:
                continue  # an interrupt save
            scores = evaluated(f"{run_dir.name}:{step}", lambda c=ckpt: create(args.backbone, weights=c))
            for protocol in protocols:
                per_step.setdefault(step, {}).setdefault(protocol, []).append(scores[protocol])

    rows = [row for protocol in protocols for row in _rows(protocol, before[protocol], per_step)]
    store["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    store["table"] = rows
    store["training_seconds"] = seconds
    _save_merged(store, store_path)
    table = _markdown(rows)
    (out / "gain.md").write_text(f"settings: {json.dumps(store['settings'])}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
