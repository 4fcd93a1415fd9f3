"""`neco demo`: scenes -> starting backbone -> evaluate -> NeCo post-training -> evaluate -> report.

Everything runs on the CPU in minutes with no download: the scenes are generated, and the default
backbone (`vit_tiny_scenes`) is a tiny ViT shipped in the package, pretrained at image level by
`neco pretrain-tiny`. Rerun into the same folder, each part (scenes, training, evaluations) is reused
only when its settings fingerprint is unchanged (`neco.demo.parts`), so an interrupted demo picks up
where it stopped and a demo with other settings redoes what they change, and says so.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neco.utils.io import ensure_writable_dir, write_json
from neco.utils.logging import get_logger
from neco.utils.settings import option

__all__ = ["DemoConfig", "PROTOCOLS", "evaluate_backbone", "run_demo", "train_config"]

log = get_logger("neco.demo")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo; the defaults fit in about 10 minutes on 2 CPU cores (the CLI ones are `neco demo`'s options)."""

    out: str = option("demo_out", "output folder", flag="--out")
    backbone: str = option("vit_tiny_scenes", cli=False)  # `--backbone` etc.: the shared backbone options
    weights: str | None = option(None, cli=False)
    random_init: bool = option(False, cli=False)  # a random init of `backbone` (saved, so NeCo trains it)
    which: str = option("teacher", cli=False)  # network of a checkpoint holding both (`weights`)
    minutes: float = option(5.0, "NeCo post-training budget in minutes (wall clock)")
    num_train: int = option(200, cli=False)
    num_val: int = option(60, cli=False)
    image_size: int = option(96, cli=False)
    eval_seeds: tuple[int, ...] = option((0, 1, 2), cli=False)
    hummingbird_memory: int = option(20_000, cli=False)
    linear_epochs: int = option(20, cli=False)
    # lr 0.01 (the published probe's) left the tiny features' probe at background only (7.1 mIoU); 1.0 learns (13.9).
    linear_lr: float = option(1.0, cli=False)
    overcluster_k: int = option(100, cli=False)
    train_steps: int | None = option(None, "training steps (none: what fits in --minutes)", flag="--steps")
    batch_size: int = option(16, cli=False)
    # Measured on the scenes (docs/benchmarks.md): the published 1e-5 barely moves the model in minutes;
    # 2e-4 collapses the features (teacher P flattens, patch cosine 0.3 -> 0.9); 5e-5 gains.
    lr_backbone: float = option(5e-5, "backbone learning rate of the post-training", flag="--lr")
    ema_momentum: float = option(0.99, cli=False)
    # A sharper teacher than student (published: 100 / 100) keeps the targets from flattening on a weak start.
    teacher_steepness: float = option(300.0, "teacher sorting steepness (the student's: 100)")
    progress: bool = option(True, "progress bars")

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ValueError(f"--minutes must be > 0 but is {self.minutes}")
        if self.which not in ("teacher", "student"):
            raise ValueError(f"--which must be teacher or student but is {self.which!r}")
        if len(self.eval_seeds) < 1:
            raise ValueError("`eval_seeds` must name at least one seed")
        for name in ("num_train", "num_val", "image_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1 but is {getattr(self, name)}")
        # Checked here, not only by the training config, so a bad value fails before the first evaluation.
        if not self.lr_backbone >= 0:
            raise ValueError(f"--lr must be >= 0 but is {self.lr_backbone}")
        if not self.teacher_steepness > 0:
            raise ValueError(f"--teacher-steepness must be > 0 but is {self.teacher_steepness}")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A seconds-long variant for CI: few images, few steps, short probes (numbers are not meaningful)."""
        values: dict[str, Any] = dict(
            minutes=0.2,
            num_train=24,
            num_val=8,
            image_size=64,
            hummingbird_memory=2_000,
            linear_epochs=2,
            overcluster_k=20,
            train_steps=4,
            batch_size=4,
        )
        values.update(overrides)
        return cls(**values)


# --- evaluation -----------------------------------------------------------------------------------


PROTOCOLS = ("hummingbird", "linear", "overcluster")


def evaluate_backbone(
    model: torch.nn.Module,
    train_set: Any,
    val_set: Any,
    cfg: DemoConfig,
    tag: str,
    protocols: tuple[str, ...] = PROTOCOLS,
) -> dict[str, Any]:
    """Hummingbird, linear and overclustering mIoU of `model` (or the named `protocols`), over the evaluation seeds."""
    from neco.evaluation import EvalData, Features, evaluate
    from neco.evaluation.protocols.hummingbird import HummingbirdSettings
    from neco.evaluation.protocols.linear import LinearSettings
    from neco.evaluation.protocols.overcluster import OverclusterSettings

    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"`protocols` must be among {list(PROTOCOLS)} but got {unknown}")
    features = Features.of_model(model)
    data = EvalData(val=val_set, train=train_set, name="scenes")
    settings = {
        "hummingbird": HummingbirdSettings(memory_size=cfg.hummingbird_memory),
        # cached features: the demo's time budget (the published augmented recipe is `neco eval linear`'s default)
        "linear": LinearSettings(
            epochs=cfg.linear_epochs,
            lr=cfg.linear_lr,
            lr_step_epoch=max(1, int(cfg.linear_epochs * 0.8)),
            probe_batch_size=8,
            target_size=cfg.image_size,
            train_features="cached",
        ),
        "overcluster": OverclusterSettings(
            ks=(cfg.overcluster_k,), num_seeds=1, nredo=2, target_size=cfg.image_size
        ),
    }
    run = {"input_size": cfg.image_size, "batch_size": 32, "num_workers": 0, "device": "cpu"}
    scores: dict[str, list[float]] = {name: [] for name in protocols}
    examples: dict[str, Any] = {}
    for seed in cfg.eval_seeds:
        log.info(f"[{tag}] evaluation seed {seed}")
        outputs = {}
        for name in protocols:
            progress = cfg.progress and name != "overcluster"
            outputs[name] = evaluate(
                name, features, data, settings[name], seed=seed, progress=progress, **run
            )
            scores[name].append(outputs[name].headline)
        if not examples:
            examples = {
                k: outputs[k].output.examples if k in outputs else None for k in ("hummingbird", "linear")
            }
    summary = {
        key: {
            "miou_mean": float(np.mean(v)),
            "miou_std": float(np.std(v)),
            "miou_per_seed": [float(x) for x in v],
        }
        for key, v in scores.items()
    }
    return {"scores": summary, "examples": examples}


# --- training -------------------------------------------------------------------------------------


def train_config(cfg: DemoConfig, scenes: Path, run_dir: Path, steps: int, start_weights: str | None) -> Any:
    """The tiny CPU preset, pointed at the generated scenes and the starting backbone."""
    from neco.training.config import load_config, replace_keys

    settings = {
        "model.backbone": cfg.backbone,
        "model.pretrained": not start_weights,
        "model.weights": start_weights or None,
        "model.drop_path_rate": 0.1,
        "data.kind": "voc",
        "data.root": str(scenes),
        "data.batch_size": cfg.batch_size,
        "data.num_workers": 0,
        "data.crops.global_size": cfg.image_size * 2 // 3 // 8 * 8,
        "data.crops.local_size": max(16, cfg.image_size // 3 // 8 * 8),
        "optim.lr_backbone": cfg.lr_backbone,
        "loss.steepness_teacher": cfg.teacher_steepness,
        # The published 0.9995 -> 1 EMA barely moves the teacher in a few hundred steps.
        "optim.momentum": cfg.ema_momentum,
        "optim.max_steps": steps,
        "optim.epochs": 1000,
        "run.out_dir": str(run_dir),
        "run.precision": "fp32",
        "run.accelerator": "cpu",
        "run.devices": 1,
        "run.log_every": 1,
        "run.ckpt_every_steps": max(1, steps // 4),
        "run.progress": cfg.progress,
    }
    return replace_keys(load_config(_tiny_preset()), settings)


def _tiny_preset() -> Path:
    """The installed `tiny_cpu` preset (package data); a missing preset is an error, not the defaults."""
    from neco.training.presets import preset_path

    return preset_path("tiny_cpu")


def _file_identity(path: str | None) -> dict[str, Any] | None:
    """Path, size and modification time of a weights file: a changed file changes the fingerprint."""
    if path is None:
        return None
    file = Path(path).expanduser()
    stat = file.stat() if file.is_file() else None
    return {
        "path": str(file.resolve()),
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
    }


_PER_STEP = ("teacher_perm_max", "student_perm_max")  # logged with the loss
_COLLAPSE = ("mean_pairwise_cosine", "effective_rank")  # logged every `run.diagnostics_every` steps


def _read_metrics(run_dir: Path) -> dict[str, list[float]]:
    """Loss, throughput and collapse diagnostics per step from the CSV logger of a training run."""
    files = sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    curves: dict[str, list[float]] = {
        "step": [], "loss": [], "images_per_s": [], "diag_step": [], **{k: [] for k in _PER_STEP + _COLLAPSE}
    }  # fmt: skip
    if not files:
        return curves
    with open(files[-1], newline="") as handle:
        for row in csv.DictReader(handle):
            loss = row.get("train/loss") or row.get("loss") or ""
            if loss:
                curves["step"].append(float(row.get("step") or len(curves["step"])))
                curves["loss"].append(float(loss))
                rate = row.get("train/images_per_s") or row.get("images_per_s") or ""
                curves["images_per_s"].append(float(rate) if rate else math.nan)
                for key in _PER_STEP:
                    curves[key].append(float(row.get(f"train/{key}") or math.nan))
            if row.get("train/mean_pairwise_cosine"):
                curves["diag_step"].append(float(row.get("step") or 0))
                for key in _COLLAPSE:
                    curves[key].append(float(row.get(f"train/{key}") or math.nan))
    return curves


# --- the whole demo -------------------------------------------------------------------------------


def start_model(cfg: DemoConfig, out: Path) -> tuple[torch.nn.Module, str | None]:
    """The starting backbone (eval mode) and the weights file NeCo trains from (the very same network)."""
    from neco.backbones import create

    torch.manual_seed(0)  # a --random-init start is reproducible
    model = create(
        cfg.backbone,
        pretrained=cfg.weights is None and not cfg.random_init,
        weights=cfg.weights,
        which=cfg.which,
    ).eval()
    if cfg.random_init or (cfg.weights is not None and cfg.which != "teacher"):
        # Training reads a checkpoint's teacher: save the very model evaluated "before" instead.
        start_weights = str(out / ("random_init.pth" if cfg.random_init else f"start_{cfg.which}.pth"))
        torch.save(model.state_dict(), start_weights)
        return model, start_weights
    return model, cfg.weights


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo end to end and write report.md, report.html and results.json into `cfg.out`."""
    from neco.backbones import create, get_config
    from neco.backbones.loading import backbone_identity
    from neco.data import build_segmentation_dataset
    from neco.data.synthetic import write_scenes
    from neco.demo.figures import (
        save_curves,
        save_diagnostics,
        save_pca_comparison,
        save_retrieval_figure,
        save_segmentation_comparison,
    )
    from neco.demo.parts import Parts, fingerprint
    from neco.demo.report import summary_lines, write_reports
    from neco.evaluation import Features
    from neco.training.run import train

    started = time.perf_counter()
    out = ensure_writable_dir(cfg.out, "--out")
    config = get_config(cfg.backbone)  # ValueError listing the known names
    parts = Parts(out)
    scene_settings = {
        "num_train": cfg.num_train,
        "num_val": cfg.num_val,
        "image_size": cfg.image_size,
        "seed": 0,
    }
    parts.prepare("scenes", scene_settings, ("scenes",))
    scenes = write_scenes(
        out / "scenes", cfg.num_train, cfg.num_val, cfg.image_size, seed=0, progress=cfg.progress
    )
    parts.record("scenes", scene_settings)
    train_set = build_segmentation_dataset("scenes", scenes, "train")
    val_set = build_segmentation_dataset("scenes", scenes, "val")

    before_model, start_weights = start_model(cfg, out)
    identity = backbone_identity(before_model, cfg.backbone, start_weights)
    log.info(f"evaluating the starting backbone {cfg.backbone} ({config.description})")
    before = evaluate_backbone(before_model, train_set, val_set, cfg, "before")

    training_settings = {
        "scenes": fingerprint(scene_settings),
        "backbone": cfg.backbone,
        "weights": _file_identity(cfg.weights),
        "random_init": cfg.random_init,
        "which": cfg.which,
        "steps": cfg.train_steps,
        "minutes": cfg.minutes if cfg.train_steps is None else None,
        **{
            k: getattr(cfg, k)
            for k in ("batch_size", "lr_backbone", "ema_momentum", "teacher_steepness", "image_size")
        },
        "preset": fingerprint({"text": _tiny_preset().read_text()}),
    }
    _, reuse_training = parts.prepare("training", training_settings, ("neco_run", "neco_probe"))
    previous_steps = parts.previous.get("training", {}).get("resolved_steps") if reuse_training else None
    # A reused run keeps its step count: re-estimating from this machine's speed would change the run.
    steps = previous_steps or cfg.train_steps or _estimate_steps(cfg, scenes, start_weights)
    parts.record("training", training_settings, resolved_steps=steps)
    run_dir = out / "neco_run"
    log.info(f"NeCo post-training for {steps} steps (about {cfg.minutes:g} min)")
    train_cfg = train_config(cfg, scenes, run_dir, steps, start_weights)
    t0 = time.perf_counter()
    result = train(train_cfg, resume="auto", progress=cfg.progress)
    train_seconds = time.perf_counter() - t0
    if result.last_checkpoint is None:
        raise RuntimeError(f"NeCo training wrote no checkpoint under {run_dir}")
    after_model = create(cfg.backbone, weights=result.last_checkpoint).eval()
    after = evaluate_backbone(after_model, train_set, val_set, cfg, "after")

    from neco.explore import dataset_images, write_explore

    pair = [(f"{cfg.backbone} (start)", before_model), ("NeCo teacher", after_model)]
    views = dataset_images(val_set, cfg.image_size)
    write_explore(out / "explore.html", pair, views, title="neco demo: validation scenes")
    curves = _read_metrics(run_dir)
    figures: dict[str, str] = {}
    retrieval_agreement: dict[str, float] = {}
    if curves["loss"]:
        save_curves(curves["step"], curves["loss"], curves["images_per_s"], out / "curves.png")
        figures["curves"] = "curves.png"
        save_diagnostics(curves, out / "diagnostics.png", references=train_cfg.loss.roi_size**2)
        figures["diagnostics"] = "diagnostics.png"
    examples_before, examples_after = before["examples"]["hummingbird"], after["examples"]["hummingbird"]
    if examples_before is not None and examples_after is not None:
        images = examples_before.images
        features_before, features_after = Features.of_model(before_model), Features.of_model(after_model)
        fb, fa = features_before(images), features_after(images)
        save_pca_comparison(images, fb, fa, out / "pca.png")
        figures["pca"] = "pca.png"
        save_segmentation_comparison(
            images,
            examples_before.masks,
            examples_before.predictions,
            examples_after.predictions,
            out / "segmentation.png",
            num_classes=val_set.num_classes,
            ignore_index=val_set.ignore_index,
        )
        figures["segmentation"] = "segmentation.png"
        pool, pool_masks = _pool_images(train_set, cfg.image_size, 16)
        cells = _query_cells(examples_before.masks, int(before_model.patch_size), 4)
        retrieval_agreement = save_retrieval_figure(
            images,
            cells,
            pool,
            {
                "before": (fb, features_before(pool)),
                "after": (fa, features_after(pool)),
            },
            out / "retrieval.png",
            patch_size=int(before_model.patch_size),
            query_masks=examples_before.masks,
            pool_masks=pool_masks,
        )
        figures["retrieval"] = "retrieval.png"

    rates = [r for r in curves["images_per_s"] if math.isfinite(r)]
    evaluation_settings = {
        "scenes": fingerprint(scene_settings),
        "training": fingerprint(training_settings),
        "backbone": cfg.backbone,
        "weights": _file_identity(cfg.weights),
        **{
            k: getattr(cfg, k) for k in ("eval_seeds", "hummingbird_memory", "linear_epochs", "overcluster_k")
        },
    }
    parts.status["evaluations"] = "run"  # evaluations are not cached: always computed
    parts.record("evaluations", evaluation_settings)
    log.info(f"demo parts: {parts.summary()}")
    results = {
        "settings": {
            **{
                k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k != "progress"
            },
            "device": "cpu",
            "num_classes": val_set.num_classes,
            "torch_threads": torch.get_num_threads(),
        },
        "backbone": {**identity, "description": config.description},
        "evaluations": {
            name: {"setting": setting, "before": before["scores"][name], "after": after["scores"][name]}
            for name, setting in (
                (
                    "hummingbird",
                    f"memory {cfg.hummingbird_memory} patches, k=30, T=0.02, Hungarian-matched, "
                    "mean over all classes",
                ),
                ("linear", f"{cfg.linear_epochs} epochs, lr {cfg.linear_lr:g}, batch 8"),
                ("overcluster", f"K={cfg.overcluster_k}, many-to-one"),
            )
        },
        "training": {
            "steps": int(result.global_step),
            "seconds": train_seconds,
            "images_per_s": float(np.median(rates)) if rates else 0.0,
            "checkpoint": str(result.last_checkpoint),
            "loss_first": curves["loss"][0] if curves["loss"] else None,
            "loss_last": curves["loss"][-1] if curves["loss"] else None,
            # first and last logged value of each collapse diagnostic (report: how to read them)
            "diagnostics": {k: [curves[k][0], curves[k][-1]] for k in _PER_STEP + _COLLAPSE if curves[k]},
            "references": train_cfg.loss.roi_size**2,
        },
        "parts": dict(parts.status),
        "figures": figures,
        "retrieval_same_class": retrieval_agreement,
        "explore": "explore.html",
        "figure_captions": {
            "curves": "NeCo loss and throughput per training step",
            "diagnostics": "NeCo loss beside the collapse diagnostics. How to read them: a healthy run keeps "
            "the teacher's P max well above 1/references (dashed), the mean patch cosine low and the effective "
            "rank high; a collapsing one shows P max falling toward uniform, cosine rising toward 1 and rank "
            "falling, while the loss climbs toward ln(references).",
            "pca": "first three principal components of the patch features as RGB, before and after",
            "segmentation": "Hummingbird retrieval segmentation of validation scenes, before and after",
            "retrieval": "the nearest training patches of a query patch (blue frame), before and after: green "
            "when a neighbour has the query's class, red when not; the titles give the same-class fraction",
        },
        "notes": [
            "Evaluation seeds change the memory-bank augmentation and sampling (Hummingbird), the probe's "
            "initialisation and batch order (linear) and the k-means initialisation (overclustering).",
            "The same scenes, protocol and seeds are used before and after post-training.",
            f"Post-training uses the tiny CPU preset with EMA momentum {cfg.ema_momentum} -> 1 (published: "
            "0.9995 -> 1, which leaves the teacher almost unchanged in a short run), backbone LR "
            f"{cfg.lr_backbone:g} and teacher steepness {cfg.teacher_steepness:g} (student 100; published: 100 "
            "for both); the evaluated model is the teacher.",
        ],
        "seconds_total": time.perf_counter() - started,
    }
    write_json(results, out / "results.json")
    write_reports(results, out)
    for line in summary_lines(results):
        print(line)
    print(f"parts: {parts.summary()}")
    print(f"report: {out / 'report.html'} ({results['seconds_total']:.0f} s)")
    return results


def _estimate_steps(cfg: DemoConfig, scenes: Path, start_weights: str | None) -> int:
    """Steps that fit in `cfg.minutes`, from the logged images/s of a few probe steps (start-up excluded)."""
    from neco.training.run import train

    probe_dir = Path(cfg.out) / "neco_probe"
    t0 = time.perf_counter()
    train(train_config(cfg, scenes, probe_dir, 4, start_weights), progress=False)
    rates = [r for r in _read_metrics(probe_dir)["images_per_s"][1:] if math.isfinite(r) and r > 0]
    per_step = cfg.batch_size / float(np.median(rates)) if rates else (time.perf_counter() - t0) / 4
    return max(1, int(0.95 * cfg.minutes * 60 / per_step))


def _pool_images(dataset: Any, size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` images of `dataset` and their masks, resized and normalised like the evaluation inputs."""
    from neco.evaluation.blocks.transforms import EvalResize

    resize = EvalResize(size)
    pairs = [resize(*dataset.load(i)) for i in range(min(count, len(dataset)))]
    return torch.stack([image for image, _ in pairs]), torch.stack([mask for _, mask in pairs])


def _query_cells(masks: torch.Tensor, patch: int, count: int) -> list[tuple[int, int, int]]:
    """Query patches at the centre of the largest non-background object of each example image."""
    cells = []
    for index in range(min(count, masks.shape[0])):
        mask = masks[index]
        values, counts = torch.unique(mask[(mask > 0) & (mask != 255)], return_counts=True)
        target = int(values[counts.argmax()]) if len(values) else 0
        ys, xs = torch.nonzero(mask == target, as_tuple=True)
        y, x = int(ys.float().median()), int(xs.float().median())
        h, w = mask.shape[0] // patch, mask.shape[1] // patch
        cells.append((index, min(y // patch, h - 1), min(x // patch, w - 1)))
    return cells
