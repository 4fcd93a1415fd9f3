"""`neco eval correspondence`: SPair-71k keypoint transfer scored by PCK (bbox and image thresholds)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["register_protocol", "default_correspondence_size"]

_DATASETS = {"spair": "an SPair-71k folder (JPEGImages/, PairAnnotation/, ImageAnnotation/)"}


def default_correspondence_size(patch_size: int) -> int:
    """448 px rounded to a whole number of patches (the input size of the other dense protocols)."""
    return max(1, round(448 / patch_size)) * patch_size


def register_protocol(protocols: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `correspondence` to the `neco eval` protocols."""
    parser = protocols.add_parser(
        "correspondence", help="semantic correspondence: SPair-71k keypoint transfer (PCK)"
    )
    add_common(parser)
    # the shared options fit; only the split default differs (SPair papers report the test split)
    parser.set_defaults(val_split="test", func=_run)
    group = parser.add_argument_group("correspondence")
    group.add_argument(
        "--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.15], help="PCK thresholds (x max side)"
    )
    group.add_argument(
        "--refine", default="argmax", help="argmax (cell centre) or softargmax (window around the best cell)"
    )
    group.add_argument("--window", type=int, default=2, help="soft-argmax half-width in grid cells")
    group.add_argument("--temperature", type=float, default=0.02, help="soft-argmax temperature")
    group.add_argument("--upsample", type=int, default=1, help="bilinear upsampling of the target features")
    group.add_argument("--categories", nargs="+", default=None, help="evaluate these categories only")
    group.add_argument("--max-pairs", type=int, default=None, help="evaluate the first N pairs only")


def _run(args: argparse.Namespace) -> int:
    import torch

    from neco.data.spair import build_spair
    from neco.evaluation.backbone import load_backbone, model_features_fn
    from neco.evaluation.common import check_divisible, resolve_device
    from neco.evaluation.correspondence import CorrespondenceConfig, run_correspondence
    from neco.evaluation.results import write_result
    from neco.utils.io import ensure_writable_dir
    from neco.utils.logging import get_logger

    log = get_logger("neco.eval")
    if args.dataset not in _DATASETS:
        raise ValueError(f"`--dataset` must be one of {sorted(_DATASETS)} but is {args.dataset!r}")
    out_dir = ensure_writable_dir(args.out)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    # the pair files are checked before a (possibly large) backbone is loaded
    dataset = build_spair(
        args.data_root, args.val_split, categories=args.categories, max_pairs=args.max_pairs
    )
    torch.manual_seed(args.seed)  # a --random-init backbone is then reproducible
    model, identity = load_backbone(
        args.backbone, weights=args.weights, pretrained=not args.random_init, which=args.which
    )
    patch = int(model.patch_size)
    input_size = args.input_size or default_correspondence_size(patch)
    check_divisible(input_size, patch)
    config = CorrespondenceConfig(
        input_size=input_size,
        alphas=tuple(args.alphas),
        refine=args.refine,
        window=args.window,
        temperature=args.temperature,
        upsample=args.upsample,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    config.validate()
    log.info(
        f"correspondence: {identity['name']} on {args.dataset} {dataset.split} ({len(dataset)} pairs), "
        f"input {input_size}"
    )
    output = run_correspondence(
        model_features_fn(model, device, args.precision),
        dataset,
        config,
        patch_size=patch,
        progress=not args.no_progress,
        num_examples=args.num_figures,
    )
    output.result["dataset"] = {"name": args.dataset, "root": str(args.data_root), "split": dataset.split}
    output.result["backbone"] = {**identity, "which": args.which, "precision": args.precision}
    output.result["command"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"
    }
    figures = []
    if output.examples:
        from neco.viz.keypoints import save_keypoint_figure

        figures.append(save_keypoint_figure(output.examples, out_dir / "correspondence_keypoints.png").name)
    output.result["figures"] = figures
    path = write_result(out_dir / "correspondence.json", output.result)
    for warning in output.warnings:
        log.warning(warning)
    metrics = output.result["metrics"]
    headline = ", ".join(f"PCK@{a:g} {metrics[f'pck_bbox@{a:g}']:.2f}" for a in config.alphas)
    print(f"correspondence {identity['name']} on {args.dataset}/{dataset.split}: {headline} (bbox) -> {path}")
    return 0
