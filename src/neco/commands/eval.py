"""`neco eval hummingbird|linear|overcluster`: dense evaluations of a backbone on a segmentation dataset."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path
from typing import Any

__all__ = ["register", "default_input_size"]

_TRAIN_SPLITS = {"voc": "trainaug"}
_PROTOCOL_SIZES = {"hummingbird": 512, "linear": 448, "overcluster": 448}


def default_input_size(protocol: str, patch_size: int) -> int:
    """The published input size: 504 (patch 14) / 512 for Hummingbird, 448 otherwise; a patch multiple."""
    if protocol == "hummingbird" and patch_size == 14:
        return 504
    base = _PROTOCOL_SIZES[protocol]
    return max(1, round(base / patch_size)) * patch_size


def _common(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset", required=True, help="dataset name (voc, ade20k, coco-stuff, cityscapes, scenes, ...)"
    )
    data.add_argument("--data-root", required=True, type=Path, help="dataset root folder")
    data.add_argument("--val-split", default="val", help="evaluation split (default: val)")
    model = parser.add_argument_group("backbone")
    model.add_argument(
        "--backbone", required=True, help="registry name (e.g. dinov2_vits14) or a neco checkpoint file"
    )
    model.add_argument(
        "--weights", default=None, help="weights file of any supported format for --backbone NAME"
    )
    model.add_argument(
        "--which", default="teacher", choices=["teacher", "student"], help="model of a NeCo checkpoint"
    )
    model.add_argument(
        "--random-init", action="store_true", help="do not load pretrained weights (tests, baselines)"
    )
    model.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="backbone autocast"
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--input-size", type=int, default=None, help="square input size (default: the published one)"
    )
    run.add_argument(
        "--out", type=Path, default=Path("eval_out"), help="output folder for <protocol>.json and PNGs"
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument("--batch-size", type=int, default=8, help="images per backbone forward")
    run.add_argument("--num-workers", type=int, default=2, help="data loader workers")
    run.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch and faiss (0: library default)"
    )
    run.add_argument("--num-figures", type=int, default=4, help="validation images shown in the PNG figures")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")


def register(subparsers: Any) -> None:
    """Add `neco eval` with one sub-command per protocol."""
    parser = subparsers.add_parser("eval", help="dense evaluations of a backbone (hummingbird, linear, overcluster, ...)")
    protocols = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)

    hb = protocols.add_parser(
        "hummingbird", help="dense nearest-neighbour retrieval (Hummingbird), the NeCo headline"
    )
    _common(hb)
    hb.add_argument(
        "--train-split", default=None, help="memory-bank split (default: trainaug for voc, else train)"
    )
    hb.add_argument(
        "--memory-size", type=int, default=10_240_000, help="memory-bank patches (published: 1024*10^2..10^4)"
    )
    hb.add_argument("--aug-epochs", type=int, default=2, help="augmented passes over the training images")
    hb.add_argument("--k", type=int, default=30, help="nearest neighbours per query patch")
    hb.add_argument(
        "--temperature", type=float, default=0.02, help="softmax temperature on cosine similarities"
    )
    hb.add_argument(
        "--fraction", type=float, default=1.0, help="seeded fraction of the training set (1/128 ... 1)"
    )
    hb.add_argument("--search", default="auto", help="auto, faiss, torch (exact) or ivf (approximate)")
    hb.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~sqrt(memory))")
    hb.add_argument("--nprobe", type=int, default=16, help="IVF lists probed per query")
    hb.add_argument("--bank-dtype", default="fp32", help="memory-bank feature storage: fp32 or fp16")
    hb.set_defaults(func=_run)

    lin = protocols.add_parser("linear", help="linear segmentation probe on frozen features")
    _common(lin)
    lin.add_argument(
        "--train-split", default=None, help="probe training split (default: trainaug for voc, else train)"
    )
    lin.add_argument("--epochs", type=int, default=25)
    lin.add_argument("--lr", type=float, default=0.01)
    lin.add_argument("--lr-step-epoch", type=int, default=20, help="epoch of the x0.1 learning-rate step")
    lin.add_argument("--probe-batch-size", type=int, default=128, help="probe minibatch size")
    lin.add_argument("--target-size", type=int, default=100, help="logit and mask resolution")
    lin.add_argument(
        "--augment", action="store_true", help="published RandomResizedCrop+flip (recomputes features)"
    )
    lin.add_argument(
        "--cache-gb", type=float, default=16.0, help="feature-cache budget in GiB (else recompute)"
    )
    lin.add_argument("--fraction", type=float, default=1.0, help="seeded fraction of the training set")
    lin.set_defaults(func=_run)

    oc = protocols.add_parser("overcluster", help="k-means overclustering of validation patch features")
    _common(oc)
    oc.add_argument(
        "--ks", type=int, nargs="+", default=[0, 100, 300, 500], help="cluster counts (0 = #classes)"
    )
    oc.add_argument("--num-seeds", type=int, default=5, help="k-means seeds (seed .. seed + n - 1)")
    oc.add_argument("--pca-dim", type=int, default=50)
    oc.add_argument("--niter", type=int, default=100)
    oc.add_argument("--nredo", type=int, default=5)
    oc.add_argument("--target-size", type=int, default=100, help="cluster-map and mask resolution")
    oc.set_defaults(func=_run)

    # Further protocols live in `neco.commands._eval_<name>` modules (underscore: not top-level commands),
    # each with `register_protocol(protocols, add_common)`; the shared options come from `_common`.
    import neco.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_eval_"):
            importlib.import_module(f"neco.commands.{info.name}").register_protocol(protocols, _common)


def _run(args: argparse.Namespace) -> int:
    import torch

    from neco.data import build_segmentation_dataset
    from neco.evaluation.backbone import load_backbone, model_features_fn
    from neco.evaluation.common import check_divisible, resolve_device
    from neco.evaluation.results import write_result
    from neco.utils.io import ensure_writable_dir
    from neco.utils.logging import get_logger

    log = get_logger("neco.eval")
    out_dir = ensure_writable_dir(args.out)
    if args.threads > 0:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)  # a --random-init backbone is then reproducible (same checksum)
    model, identity = load_backbone(
        args.backbone, weights=args.weights, pretrained=not args.random_init, which=args.which
    )
    patch = int(model.patch_size)
    input_size = args.input_size or default_input_size(args.protocol, patch)
    check_divisible(input_size, patch)  # fail before reading any data
    features_fn = model_features_fn(model, device, args.precision)
    val_set = build_segmentation_dataset(args.dataset, args.data_root, args.val_split)
    progress = not args.no_progress
    log.info(
        f"{args.protocol}: {identity['name']} on {args.dataset} {args.val_split} ({len(val_set)} images), input {input_size}"
    )

    if args.protocol in ("hummingbird", "linear"):
        train_split = args.train_split or _TRAIN_SPLITS.get(args.dataset, "train")
        train_set = build_segmentation_dataset(args.dataset, args.data_root, train_split)
    if args.protocol == "hummingbird":
        from neco.evaluation.hummingbird import HummingbirdConfig, run_hummingbird

        config = HummingbirdConfig(
            input_size=input_size,
            memory_size=args.memory_size,
            augmentation_epochs=args.aug_epochs,
            k=args.k,
            temperature=args.temperature,
            train_fraction=args.fraction,
            seed=args.seed,
            search=args.search,
            nlist=args.nlist,
            nprobe=args.nprobe,
            bank_dtype=args.bank_dtype,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=str(device),
        )
        output = run_hummingbird(
            features_fn,
            train_set,
            val_set,
            config,
            patch_size=patch,
            progress=progress,
            num_examples=args.num_figures,
        )
        headline = f"mIoU {output.result['metrics']['miou']:.2f}"
    elif args.protocol == "linear":
        from neco.evaluation.linear import LinearConfig, run_linear

        config = LinearConfig(
            input_size=input_size,
            target_size=args.target_size,
            epochs=args.epochs,
            lr=args.lr,
            lr_step_epoch=args.lr_step_epoch,
            batch_size=args.probe_batch_size,
            augment=args.augment,
            cache_gb=args.cache_gb,
            feature_batch_size=args.batch_size,
            train_fraction=args.fraction,
            seed=args.seed,
            num_workers=args.num_workers,
            device=str(device),
        )
        output = run_linear(
            features_fn,
            train_set,
            val_set,
            config,
            patch_size=patch,
            progress=progress,
            num_examples=args.num_figures,
        )
        headline = f"mIoU {output.result['metrics']['miou']:.2f}"
    else:
        from neco.evaluation.overcluster import OverclusterConfig, run_overcluster

        config = OverclusterConfig(
            input_size=input_size,
            target_size=args.target_size,
            pca_dim=args.pca_dim,
            ks=tuple(args.ks),
            seeds=tuple(range(args.seed, args.seed + args.num_seeds)),
            niter=args.niter,
            nredo=args.nredo,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            threads=args.threads,
        )
        output = run_overcluster(
            features_fn, val_set, config, patch_size=patch, progress=progress, num_examples=args.num_figures
        )
        headline = ", ".join(
            f"{k}: {v['miou_mean']:.2f} +- {v['miou_std']:.2f}" for k, v in output.result["metrics"].items()
        )

    output.result["backbone"] = {**identity, "which": args.which, "precision": args.precision}
    output.result["command"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"
    }
    figures = _write_figures(output, out_dir, args.protocol, val_set, features_fn)
    output.result["figures"] = figures
    path = write_result(out_dir / f"{args.protocol}.json", output.result)
    for warning in output.warnings:
        log.warning(warning)
    print(f"{args.protocol} {identity['name']} on {args.dataset}/{args.val_split}: {headline} -> {path}")
    return 0


def _write_figures(output: Any, out_dir: Path, protocol: str, val_set: Any, features_fn: Any) -> list[str]:
    """PCA colour maps and image | GT | prediction panels of the kept validation examples."""
    from neco.viz import save_overlay_figure, save_pca_figure

    examples = output.examples
    if examples is None:
        return []
    features = examples.features if examples.features is not None else features_fn(examples.images).cpu()
    written = [
        save_pca_figure(examples.images, features, out_dir / f"{protocol}_pca.png"),
        save_overlay_figure(
            examples.images,
            examples.masks,
            examples.predictions,
            out_dir / f"{protocol}_predictions.png",
            num_classes=val_set.num_classes,
            ignore_index=val_set.ignore_index,
        ),
    ]
    return [p.name for p in written]
