"""Does NeCo post-training improve its starting backbone, and is it the NeCo loss that does it?

From one starting backbone (default: the shipped `vit_tiny_scenes`), NeCo post-trains on the
generated scenes for `--steps` steps with each of `--train-seeds`, keeping a checkpoint every
`--eval-every` steps. The *control* arm repeats every run with the NeCo loss switched off
(`loss.weight=0`: its gradient is zero, but the optimizer, weight decay, EMA teacher, schedules and
augmentation all act as in the NeCo run), so "NeCo minus control" is the effect of the loss itself.
The start and every checkpoint (the teacher) are evaluated with the demo's protocols over
`--eval-seeds`, on the developer scenes the settings were tuned on and, with `--families ...
heldout`, on a held-out generator family nothing was tuned on (memory bank and validation from
that family; NeCo always trains on the developer scenes).

The table reports, per family, arm and step, the mean over training seeds of the per-run mean over
evaluation seeds, both spreads (std over training seeds of those means; mean std over evaluation
seeds), the gain over the start, the gain over the larger spread, and how many paired differences
(same evaluation seed before and after) are positive. The "neco - control" rows pair the two arms
by (training seed, evaluation seed); their ratio divides by the largest spread of either arm.

Examples:
  python benchmarks/synthetic_gain.py --out runs/gain --steps 300 --eval-every 300 \
      --families developer heldout --protocols hummingbird --threads 1 \
      --results benchmarks/results/synthetic_gain_demo.json
  python benchmarks/synthetic_gain.py --from-results benchmarks/results/synthetic_gain_demo.json

Rerunning with the same `--out` reuses the scenes, finished training runs (resumed from their last
checkpoint) and every evaluation already stored in `gain.json`. Runs and evaluations are keyed by a
hash of the whole resolved training config, the scenes' settings, the evaluation settings and the
sha256 of the start weights, so changing any of them never reuses a stale result. Two processes
may share `--out` (e.g. one per `--arms` value); rerun once with all arms to print the joint table.
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

ARMS = ("neco", "control")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    parser.add_argument(
        "--arms", nargs="+", default=list(ARMS), choices=ARMS, help="neco and/or control (loss.weight=0)"
    )
    parser.add_argument(
        "--families",
        nargs="+",
        default=["developer"],
        choices=("developer", "heldout"),
        help="scene families to evaluate on (training always uses the developer scenes)",
    )
    parser.add_argument("--num-train", type=int, default=200, help="training scenes (NeCo and memory bank)")
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--memory", type=int, default=20_000, help="Hummingbird memory-bank size (patches)")
    parser.add_argument("--lr", type=float, default=5e-5, help="backbone learning rate (demo default)")
    parser.add_argument("--ema", type=float, default=0.99, help="EMA momentum start (demo default)")
    parser.add_argument("--teacher-steepness", type=float, default=300.0, help="(demo default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: library default)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="further training-config overrides"
    )
    parser.add_argument("--results", type=Path, default=None, help="also write the raw per-seed scores here")
    parser.add_argument("--from-results", type=Path, default=None, help="print the table of a results file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1:
        parser.error(f"--steps and --eval-every must be >= 1 but are {args.steps} and {args.eval_every}")
    return args


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _std(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


# --- the table (from the raw per-seed scores alone, so a committed results file recomputes it) ------


def _arm_rows(family: str, protocol: str, arm: str, before: list[float], runs: dict[str, dict]) -> list[dict]:
    """One row per step of one arm: mean, both spreads, gain, gain over the larger spread, paired differences."""
    start_std = _std(before)
    steps = sorted({int(s) for per_step in runs.values() for s in per_step})
    rows = []
    for step in steps:
        scores = [runs[seed][str(step)][protocol] for seed in sorted(runs) if str(step) in runs[seed]]
        means = [statistics.fmean(r) for r in scores]
        gain = statistics.fmean(means) - statistics.fmean(before)
        std_train = _std(means) if len(means) > 1 else None
        std_eval = statistics.fmean([_std(r) for r in scores] + [start_std])
        spread = max(std_train or 0.0, std_eval)
        paired = [a - b for r in scores for a, b in zip(r, before, strict=True)]
        rows.append(
            {
                "family": family,
                "protocol": protocol,
                "arm": arm,
                "step": step,
                "mean": statistics.fmean(means),
                "std_train": std_train,
                "std_eval": std_eval,
                "gain": gain,
                # No ratio where the spread is ~0: it would say nothing but "divided by almost zero".
                "gain_over_spread": gain / spread if spread > 0.05 else None,
                "paired_positive": f"{sum(d > 0 for d in paired)}/{len(paired)}",
                "runs": len(scores),
            }
        )
    return rows


def _difference_rows(
    neco: list[dict], control: list[dict], scores: dict, family: str, protocol: str
) -> list[dict]:
    """NeCo minus control per step, paired by (training seed, evaluation seed)."""
    by_step = {r["step"]: r for r in control}
    rows = []
    for row in neco:
        other = by_step.get(row["step"])
        if other is None:
            continue
        step = str(row["step"])
        paired = [
            a - b
            for seed in sorted(set(scores["neco"]) & set(scores["control"]))
            if step in scores["neco"][seed] and step in scores["control"][seed]
            for a, b in zip(
                scores["neco"][seed][step][protocol], scores["control"][seed][step][protocol], strict=True
            )
        ]
        spread = max(row["std_train"] or 0.0, other["std_train"] or 0.0, row["std_eval"], other["std_eval"])
        gain = row["gain"] - other["gain"]
        rows.append(
            {
                "family": family,
                "protocol": protocol,
                "arm": "neco - control",
                "step": row["step"],
                "mean": row["mean"] - other["mean"],
                "std_train": None,
                "std_eval": spread,
                "gain": gain,
                "gain_over_spread": gain / spread if spread > 0.05 else None,
                "paired_positive": f"{sum(d > 0 for d in paired)}/{len(paired)}",
                "runs": min(row["runs"], other["runs"]),
            }
        )
    return rows


def table_rows(results: dict[str, Any]) -> list[dict]:
    """All rows of the table from a results dict (`scores[family]["start"|arm]`, per seed and step)."""
    rows = []
    for family, scores in results["scores"].items():
        for protocol in results["settings"]["protocols"]:
            before = scores["start"][protocol]
            rows.append(
                {
                    "family": family,
                    "protocol": protocol,
                    "arm": "start",
                    "step": 0,
                    "mean": statistics.fmean(before),
                    "std_train": None,
                    "std_eval": _std(before),
                    "gain": 0.0,
                    "gain_over_spread": None,
                    "paired_positive": None,
                    "runs": 1,
                }
            )
            arms = {
                arm: _arm_rows(family, protocol, arm, before, scores[arm]) for arm in ARMS if scores.get(arm)
            }
            for arm_rows in arms.values():
                rows += arm_rows
            if len(arms) == 2:
                rows += _difference_rows(arms["neco"], arms["control"], scores, family, protocol)
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| family | protocol | arm | step | mIoU | std (train seeds) | std (eval seeds) | gain | gain / larger std "
        "| paired > 0 | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r["gain_over_spread"] is None else f"{r['gain_over_spread']:+.1f}"
        if r["gain_over_spread"] is None and r["arm"] != "start":
            ratio = "spread ~0"
        train = "" if r["std_train"] is None else f"{r['std_train']:.2f}"
        mean = f"{r['mean']:+.2f}" if r["arm"] == "neco - control" else f"{r['mean']:.2f}"
        lines.append(
            f"| {r['family']} | {r['protocol']} | {r['arm']} | {r['step']} | {mean} | {train} | {r['std_eval']:.2f} "
            f"| {r['gain']:+.2f} | {ratio} | {r['paired_positive'] or ''} | {r['runs']} |"
        )
    return "\n".join(lines)


# --- running ---------------------------------------------------------------------------------------


def _save_merged(store: dict[str, Any], path: Path) -> None:
    """Write `store`, keeping evaluations another process (e.g. one per arm) wrote meanwhile."""
    from neco.utils.io import write_json

    if path.is_file():
        on_disk = json.loads(path.read_text()).get("evaluations", {})
        for key, scores in on_disk.items():
            store["evaluations"].setdefault(key, {}).update(
                {p: v for p, v in scores.items() if p not in store["evaluations"][key]}
            )
    write_json(store, path)


def main(argv: list[str] | None = None) -> int:
    """Post-train from one start over seeds, with and without the NeCo loss, and tabulate the gains."""
    args = _parse(argv)
    if args.from_results is not None:
        print(markdown(table_rows(json.loads(args.from_results.read_text()))))
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from neco.backbones import create
    from neco.backbones.loading import state_dict_checksum
    from neco.data import build_segmentation_dataset
    from neco.data.synthetic import scene_settings, write_scenes
    from neco.demo.run import DemoConfig, evaluate_backbone, train_config
    from neco.training.config import config_to_dict
    from neco.training.run import train
    from neco.utils.io import ensure_writable_dir, write_json

    out = ensure_writable_dir(args.out, "--out")
    progress = not args.no_progress
    cfg = DemoConfig(
        out=str(out),
        backbone=args.backbone,
        weights=args.weights,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        eval_seeds=tuple(args.eval_seeds),
        hummingbird_memory=args.memory,
        batch_size=args.batch_size,
        lr_backbone=args.lr,
        ema_momentum=args.ema,
        teacher_steepness=args.teacher_steepness,
        progress=progress,
    )
    protocols = tuple(args.protocols)
    start_model = create(args.backbone, pretrained=args.weights is None, weights=args.weights)
    start_sha = state_dict_checksum(start_model)
    scenes = {
        family: write_scenes(
            out / ("scenes" if family == "developer" else f"scenes_{family}"),
            args.num_train,
            args.num_val,
            args.image_size,
            seed=0,
            progress=progress,
            family=family,
        )
        for family in ("developer", *args.families)
    }
    datasets = {
        family: (
            build_segmentation_dataset("scenes", root, "train"),
            build_segmentation_dataset("scenes", root, "val"),
        )
        for family, root in scenes.items()
    }
    eval_settings = {
        family: {
            "scenes": scene_settings(args.num_train, args.num_val, args.image_size, 0, family=family),
            "memory": args.memory,
            "linear_epochs": cfg.linear_epochs,
            "overcluster_k": cfg.overcluster_k,
            "eval_seeds": args.eval_seeds,
        }
        for family in args.families
    }
    store_path = out / "gain.json"
    store: dict[str, Any] = json.loads(store_path.read_text()) if store_path.is_file() else {}
    evaluations: dict[str, Any] = store.setdefault("evaluations", {})

    def evaluated(model_key: str, family: str, model_fn: Any) -> dict[str, list[float]]:
        key = f"{model_key}|{family}:{_digest(eval_settings[family])}"
        cached = evaluations.get(key, {})
        missing = tuple(p for p in protocols if p not in cached)
        if missing:
            train_set, val_set = datasets[family]
            scores = evaluate_backbone(model_fn(), train_set, val_set, cfg, f"{model_key} {family}", missing)[
                "scores"
            ]
            cached.update({p: scores[p]["miou_per_seed"] for p in missing})
            evaluations[key] = cached
            _save_merged(store, store_path)
        return cached

    results: dict[str, Any] = {
        "scores": {f: {"start": {}, **{a: {} for a in args.arms}} for f in args.families}
    }
    for family in args.families:
        results["scores"][family]["start"] = evaluated(f"start:{start_sha}", family, lambda: start_model)
    seconds: dict[str, float] = {}
    for arm in args.arms:
        for seed in args.train_seeds:
            overrides = (
                f"run.seed={seed}",
                f"run.ckpt_every_steps={args.eval_every}",
                "run.keep_checkpoints=100000",
                *(("loss.weight=0",) if arm == "control" else ()),
                *args.set,
            )
            probe = train_config(
                cfg, scenes["developer"], Path("RUN_DIR"), args.steps, args.weights, overrides
            )
            identity = config_to_dict(probe)
            identity["run"].pop("out_dir")
            identity["run"].pop("progress", None)
            identity["data"].pop("root")
            run_key = _digest(
                {
                    "config": identity,
                    "start_sha256": start_sha,
                    "scenes": scene_settings(args.num_train, args.num_val, args.image_size, 0),
                }
            )
            run_dir = out / f"{arm}_seed{seed}_{run_key}"
            t0 = time.perf_counter()
            train(
                train_config(cfg, scenes["developer"], run_dir, args.steps, args.weights, overrides),
                resume="auto",
                progress=progress,
            )
            seconds[run_dir.name] = time.perf_counter() - t0
            for ckpt in sorted((run_dir / "checkpoints").glob("step_*.ckpt")):
                step = int(ckpt.stem.split("_")[1])
                if step % args.eval_every and step != args.steps:
                    continue  # an interrupt save
                for family in args.families:
                    scores = evaluated(
                        f"{run_dir.name}:{step}", family, lambda c=ckpt: create(args.backbone, weights=c)
                    )
                    per_seed = results["scores"][family][arm].setdefault(str(seed), {})
                    per_seed[str(step)] = {p: scores[p] for p in protocols}

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results.update({"settings": settings, "start_sha256": start_sha})
    rows = table_rows(results)
    results["table"] = rows
    store.update(results)
    store["training_seconds"] = seconds  # of this invocation (a finished run only resumes): not in --results
    _save_merged(store, store_path)
    if args.results is not None:
        write_json(results, args.results)
    table = markdown(rows)
    (out / "gain.md").write_text(f"settings: {json.dumps(settings)}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
