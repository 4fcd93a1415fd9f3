"""Does `neco text-align` learn a language interface? Zero-shot mIoU on generated scenes vs chance.

For each seed: generate scenes (`--num-train` training, 16 validation, `--size` px), tint each class
by its own colour (`tint_scenes`, strength `--tint`; 0 keeps the original random-colour textures),
caption every training scene with the names of the texture classes it shows
(`write_scene_captions`), train the mapping from a random tiny open_clip text tower (width
`--text-width`, bag-of-words init, `words_init`) into the shipped `vit_tiny_scenes` backbone
(`train_text_align`), then run `neco eval openvocab` on the held-out validation scenes with
background `drop` (mIoU over the 8 object classes) and the `identity` and `subset` templates, and
with the `identity` templates plus PAMR (`--pamr`, 10 iterations, dilations 1-24: `identity_pamr`).

The prototype oracle is the ceiling of Talk2DINO's cosine inference on these features: the mapped
class embeddings replaced by each class's mean (L2-normalised) patch feature over the training
scenes, read from their pixel labels (`prototype_oracle`); no text mapping can place a class name
better than its own patches' mean, so a mapping far below the oracle is the mapping's fault, an oracle
near chance is the backbone's.

Chance is the expected mIoU of predicting each scored pixel's class uniformly at random among the
8 prompted classes, computed exactly from the validation label histogram: class c with n_c of the N
scored pixels has expected IoU (n_c / K) / (n_c + N / K - n_c / K).

Example (the numbers in docs/benchmarks.md):
  python benchmarks/openvocab_scenes.py --out /tmp/ov_bench --seeds 0 1 2 --threads 1 \
      --results benchmarks/results/openvocab_scenes_512.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Scenes, captions, mapping and evaluation of one seed."""
    from neco import backbones
    from neco.data import build_segmentation_dataset
    from neco.data.captions import tint_scenes, write_scene_captions
    from neco.data.synthetic import write_scenes
    from neco.evaluation import Features, evaluate
    from neco.evaluation.protocol import EvalData
    from neco.evaluation.protocols.openvocab import OpenVocabSettings, chance_miou
    from neco.method.text_encoder import tiny_text_config
    from neco.training.text_align import TextAlignConfig, train_text_align

    root = args.out / f"seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    raw = write_scenes(
        root / "raw", num_train=args.num_train, num_val=16, size=args.size, seed=seed, progress=False
    )
    scenes = tint_scenes(raw, root / "scenes", strength=args.tint) if args.tint > 0 else raw
    captions = write_scene_captions(scenes, root / "captions", "folder", seed=seed)
    config = TextAlignConfig(
        data_root=str(captions),
        out_dir=str(root / "run"),
        layout="folder",
        backbone="vit_tiny_scenes",
        text_config=tiny_text_config(width=args.text_width),
        text_init="words",
        input_size=args.size,
        batch_size=args.batch_size,
        lr=args.lr,
        max_steps=args.steps,
        num_workers=0,
        progress=False,
        ckpt_every_steps=args.steps,
        log_every=10,
        seed=seed,
        loggers=["csv"],
    )
    start = time.perf_counter()
    result = train_text_align(config)
    train_s = time.perf_counter() - start
    losses = _losses(root / "run" / "csv")
    model = backbones.create("vit_tiny_scenes", pretrained=True)
    val = build_segmentation_dataset("scenes", scenes, "val")
    train = build_segmentation_dataset("scenes", scenes, "train")
    row = {
        "seed": seed,
        "train_s": train_s,
        "first_logged_loss": losses[0],
        "last_logged_loss": losses[-1],
        "chance_miou": chance_miou(val),
        "oracle_miou": prototype_oracle(Features.of_model(model), train, val, args.size),
    }
    for templates, refine in (("identity", False), ("subset", False), ("identity", True)):
        settings = OpenVocabSettings(
            mapping=str(result.last_checkpoint), background="drop", templates=templates, pamr=refine
        )
        templates = f"{templates}_pamr" if refine else templates
        evaluation = evaluate(
            "openvocab",
            Features.of_model(model),
            EvalData(val=val, name="scenes"),
            settings,
            input_size=args.size,
            progress=False,
            num_workers=0,
            out_dir=root / f"eval_{templates}",
        )
        row[f"miou_{templates}"] = evaluation.headline
        row[f"per_class_iou_{templates}"] = evaluation.result["metrics"]["per_class_iou"]
    return row


@torch.no_grad()
def prototype_oracle(features, train, val, size: int) -> float:
    """mIoU over the object classes (background dropped) of cosine inference with class-mean patch features."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from neco.evaluation.blocks.metrics import ConfusionMatrix
    from neco.evaluation.blocks.transforms import EvalResize, PairDataset
    from neco.method.text_align import segment_scores

    sums = None
    for images, masks, _ in DataLoader(PairDataset(train, EvalResize(size)), batch_size=32):
        grid = F.normalize(features(images), dim=1)  # (B, D, h, w)
        labels = F.interpolate(masks[:, None].float(), size=grid.shape[-2:], mode="nearest")[:, 0].long()
        onehot = F.one_hot(labels.clamp(0, train.num_classes - 1), train.num_classes).float()  # (B, h, w, K)
        batch = torch.einsum("bdhw,bhwk->kd", grid, onehot)
        sums = batch if sums is None else sums + batch
    prototypes = sums[1:]  # (K - 1, D): the object classes, as the `drop` setting prompts them
    confusion = ConfusionMatrix(val.num_classes, val.ignore_index)
    for images, masks, _ in DataLoader(PairDataset(val, EvalResize(size)), batch_size=32):
        scores = segment_scores(features(images), prototypes)
        scores = F.interpolate(scores, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        target = masks.clone()
        target[target == 0] = val.ignore_index
        confusion.update(scores.argmax(1) + 1, target)
    per_class = confusion.summary(list(val.class_names))["per_class_iou"]
    per_class.pop(val.class_names[0], None)
    return float(sum(per_class.values()) / len(per_class))


def _loadavg() -> list[str] | None:
    """The 1, 5 and 15 minute load averages (as `uptime` shows them), where the system reports them."""
    path = Path("/proc/loadavg")
    return path.read_text().split()[:3] if path.is_file() else None


def _losses(csv_dir: Path) -> list[float]:
    import csv

    files = sorted(csv_dir.glob("version_*/metrics.csv"))
    with open(files[-1]) as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle) if r.get("loss")]


def main(argv: list[str] | None = None) -> int:
    """Run every seed, print the table, write the raw results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-train", type=int, default=512)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--tint", type=float, default=0.8)
    parser.add_argument("--text-width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_at_start = _loadavg()
    rows = [run_seed(args, seed) for seed in args.seeds]
    summary = {}
    for key in ("miou_identity", "miou_subset", "miou_identity_pamr", "chance_miou", "oracle_miou"):
        values = [r[key] for r in rows]
        summary[key] = {"mean": statistics.mean(values), "std": statistics.pstdev(values)}
    chance = summary["chance_miou"]["mean"]
    for key in ("miou_identity", "miou_subset", "miou_identity_pamr", "oracle_miou"):
        summary[key]["times_chance"] = summary[key]["mean"] / chance
    print(f"{'seed':>4} {'loss first->last':>18} {'chance':>7} {'identity':>9} {'subset':>7} {'oracle':>7}")
    for r in rows:
        print(
            f"{r['seed']:>4} {r['first_logged_loss']:>8.3f} -> {r['last_logged_loss']:<7.3f} "
            f"{r['chance_miou']:>7.2f} {r['miou_identity']:>9.2f} {r['miou_subset']:>7.2f} {r['oracle_miou']:>7.2f}"
        )
    for key in ("miou_identity", "miou_subset", "miou_identity_pamr", "oracle_miou"):
        s = summary[key]
        print(f"{key}: {s['mean']:.2f} +- {s['std']:.2f} = {s['times_chance']:.2f}x chance ({chance:.2f})")
    if args.results:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        record = {
            "settings": settings,
            "rows": rows,
            "summary": summary,
            "command": sys.argv,
            "total_s": time.perf_counter() - started,
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": _loadavg(),
        }
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
