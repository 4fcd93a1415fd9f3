"""`neco eval unsupervised` (CBFE + community detection) and `neco eval attention` (CLS-attention Jaccard)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["register_protocol"]

# VOC-format datasets: label 0 is background, which both protocols need for "foreground".
_DATASETS = {"voc": "Pascal VOC 2012 folder", "scenes": "a `neco make-scenes` folder (VOC format)"}


def register_protocol(protocols: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `unsupervised` and `attention` to the `neco eval` protocols."""
    un = protocols.add_parser(
        "unsupervised",
        help="fully unsupervised segmentation: CBFE foreground + clustering, community detection",
    )
    add_common(un)
    un.set_defaults(func=_run_unsupervised)
    _mask_options(un, min_component=4)
    group = un.add_argument_group("unsupervised")
    group.add_argument("--train-split", default="train", help="split for the CBFE cut and the CD search")
    group.add_argument("--target-size", type=int, default=100, help="prediction and mask resolution")
    group.add_argument("--cbfe-k", type=int, default=200, help="spherical k-means clusters of CBFE")
    group.add_argument(
        "--cut-range",
        type=float,
        nargs=2,
        default=[0.55, 0.75],
        help="foreground-cluster cut, fractions of K",
    )
    group.add_argument("--fg-clusters", type=int, default=0, help="foreground clusters (0 = #classes - 1)")
    group.add_argument("--fg-seeds", type=int, default=5, help="k-means seeds of the foreground clustering")
    group.add_argument(
        "--cd-ks", type=int, nargs="+", default=[50, 100, 200], help="overcluster counts searched for CD"
    )
    group.add_argument(
        "--threshold-range", type=float, nargs=2, default=[0.0, 0.3], help="CD edge-weight threshold range"
    )
    group.add_argument(
        "--markov-range", type=float, nargs=2, default=[0.5, 2.0], help="Infomap Markov time range"
    )
    group.add_argument("--trials", type=int, default=30, help="optuna trials of the CD search (train split)")
    group.add_argument("--cd-seeds", type=int, default=10, help="validation seeds of CD")
    group.add_argument("--infomap-trials", type=int, default=5, help="Infomap restarts per run")
    group.add_argument("--pca-dim", type=int, default=50)
    group.add_argument("--niter", type=int, default=50, help="k-means iterations")
    group.add_argument("--nredo", type=int, default=1, help="k-means restarts")

    att = protocols.add_parser("attention", help="Jaccard of thresholded CLS attention vs GT foreground")
    add_common(att)
    att.set_defaults(func=_run_attention)
    _mask_options(att, min_component=0)


def _mask_options(parser: argparse.ArgumentParser, min_component: int) -> None:
    group = parser.add_argument_group("attention masks")
    group.add_argument("--mass", type=float, default=0.6, help="attention mass kept as foreground")
    group.add_argument("--sigma", type=float, default=0.6, help="Gaussian blur sigma in patches (0: none)")
    group.add_argument(
        "--min-component",
        type=int,
        default=min_component,
        help=f"drop foreground components smaller than this many patches (default {min_component})",
    )


def _setup(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any, Any, int, Path]:
    """Checks, device, backbone and the validation set shared by both protocols."""
    import torch

    from neco.commands.eval import default_input_size
    from neco.data import build_segmentation_dataset
    from neco.evaluation.backbone import load_backbone
    from neco.evaluation.common import check_divisible, resolve_device
    from neco.utils.io import ensure_writable_dir

    if args.dataset not in _DATASETS:
        raise ValueError(
            f"`--dataset` must be a VOC-format dataset, one of {sorted(_DATASETS)}, but is {args.dataset!r}"
        )
    out_dir = ensure_writable_dir(args.out)
    if args.threads > 0:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)  # a --random-init backbone is then reproducible
    model, identity = load_backbone(
        args.backbone, weights=args.weights, pretrained=not args.random_init, which=args.which
    )
    if not hasattr(model, "get_last_self_attention"):
        raise ValueError(f"--backbone {args.backbone}: the model must expose get_last_self_attention()")
    patch = int(model.patch_size)
    input_size = args.input_size or default_input_size("overcluster", patch)
    check_divisible(input_size, patch)
    val_set = build_segmentation_dataset(args.dataset, args.data_root, args.val_split)
    return model, identity, device, val_set, input_size, out_dir


def _finish(
    args: argparse.Namespace, output: Any, identity: dict[str, Any], out_dir: Path, figures: list[str]
):
    from neco.evaluation.results import write_result
    from neco.utils.logging import get_logger

    output.result["backbone"] = {**identity, "which": args.which, "precision": args.precision}
    output.result["command"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"
    }
    output.result["figures"] = figures
    path = write_result(out_dir / f"{args.protocol}.json", output.result)
    log = get_logger("neco.eval")
    for warning in output.warnings:
        log.warning(warning)
    return path


def _run_unsupervised(args: argparse.Namespace) -> int:
    from neco.data import build_segmentation_dataset
    from neco.evaluation.attention import model_attention_fn
    from neco.evaluation.backbone import model_features_fn
    from neco.evaluation.community import CDConfig
    from neco.evaluation.foreground import CBFEConfig
    from neco.evaluation.unsupervised import UnsupervisedConfig, run_unsupervised
    from neco.utils.logging import get_logger

    for option in ("fg_seeds", "cd_seeds"):
        if getattr(args, option) < 1:
            raise ValueError(f"`--{option.replace('_', '-')}` must be >= 1 but is {getattr(args, option)}")
    model, identity, device, val_set, input_size, out_dir = _setup(args)
    train_set = build_segmentation_dataset(args.dataset, args.data_root, args.train_split)
    config = UnsupervisedConfig(
        input_size=input_size,
        target_size=args.target_size,
        mass=args.mass,
        sigma=args.sigma,
        min_component=args.min_component,
        cbfe=CBFEConfig(k=args.cbfe_k, cut_range=tuple(args.cut_range), seed=args.seed, niter=args.niter),
        cd=CDConfig(
            ks=tuple(args.cd_ks),
            threshold_range=tuple(args.threshold_range),
            markov_range=tuple(args.markov_range),
            trials=args.trials,
            seeds=tuple(range(args.seed, args.seed + args.cd_seeds)),
            infomap_trials=args.infomap_trials,
            search_seed=args.seed,
        ),
        fg_clusters=args.fg_clusters,
        fg_seeds=tuple(range(args.seed, args.seed + args.fg_seeds)),
        pca_dim=args.pca_dim,
        niter=args.niter,
        nredo=args.nredo,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        threads=args.threads,
    )
    config.validate()  # before any feature is computed
    get_logger("neco.eval").info(
        f"unsupervised: {identity['name']} on {args.dataset} {args.train_split} ({len(train_set)} images) -> "
        f"{args.val_split} ({len(val_set)} images), input {input_size}"
    )
    output = run_unsupervised(
        model_features_fn(model, device, args.precision),
        model_attention_fn(model, device, args.precision),
        train_set,
        val_set,
        config,
        patch_size=int(model.patch_size),
        num_register_tokens=int(getattr(model, "num_register_tokens", 0)),
        progress=not args.no_progress,
        num_examples=args.num_figures,
    )
    figures = _unsupervised_figures(output.examples, out_dir, val_set)
    path = _finish(args, output, identity, out_dir, figures)
    metrics = output.result["metrics"]
    cbfe, cd, fg = metrics["cbfe"], metrics["cd"], metrics["foreground"]["cbfe_val"]
    print(
        f"unsupervised {identity['name']} on {args.dataset}/{args.val_split}: "
        f"CBFE mIoU {cbfe['miou_mean']:.2f} +- {cbfe['miou_std']:.2f}, "
        f"CD mIoU {cd['miou_mean']:.2f} +- {cd['miou_std']:.2f}, "
        f"foreground Jaccard {fg['jaccard']:.2f} -> {path}"
    )
    return 0


def _unsupervised_figures(examples: Any, out_dir: Path, val_set: Any) -> list[str]:
    """image | GT | prediction panels: foreground masks, CBFE clustering and CD segmentation."""
    from neco.viz import save_overlay_figure

    if examples is None:
        return []
    panels = [
        ("unsupervised_attention_fg.png", examples.foreground, examples.attention_foreground, 2),
        ("unsupervised_cbfe_fg.png", examples.foreground, examples.cbfe_foreground, 2),
        ("unsupervised_cbfe.png", examples.masks, examples.cbfe_predictions, val_set.num_classes),
        ("unsupervised_cd.png", examples.masks, examples.predictions, val_set.num_classes),
    ]
    written = []
    for name, gt, pred, num_classes in panels:
        path = save_overlay_figure(
            examples.images, gt, pred, out_dir / name, num_classes=num_classes, ignore_index=255
        )
        written.append(path.name)
    return written


def _run_attention(args: argparse.Namespace) -> int:
    from neco.evaluation.attention import AttentionConfig, model_attention_fn, run_attention
    from neco.viz import save_overlay_figure

    model, identity, device, val_set, input_size, out_dir = _setup(args)
    config = AttentionConfig(
        input_size=input_size,
        mass=args.mass,
        sigma=args.sigma,
        min_component=args.min_component,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    config.validate()
    output = run_attention(
        model_attention_fn(model, device, args.precision),
        val_set,
        config,
        patch_size=int(model.patch_size),
        num_register_tokens=int(getattr(model, "num_register_tokens", 0)),
        progress=not args.no_progress,
        num_examples=args.num_figures,
    )
    figures = []
    if output.examples is not None:
        ex = output.examples
        path = save_overlay_figure(
            ex.images,
            ex.masks,
            ex.predictions,
            out_dir / "attention_masks.png",
            num_classes=2,
            ignore_index=255,
        )
        figures.append(path.name)
    path = _finish(args, output, identity, out_dir, figures)
    metrics = output.result["metrics"]
    print(
        f"attention {identity['name']} on {args.dataset}/{args.val_split}: "
        f"Jaccard head-merged {metrics['head_merged']['jaccard']:.2f}, "
        f"best head {metrics['best_head']['jaccard']:.2f} (head {metrics['best_head']['head']}) -> {path}"
    )
    return 0
