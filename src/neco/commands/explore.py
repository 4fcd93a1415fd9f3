"""`neco explore IMAGES... --backbone A [--compare B]`: an interactive nearest-patch page (one HTML file)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `explore` subcommand."""
    from neco.commands._backbone import add_backbone_options

    parser = subparsers.add_parser(
        "explore",
        help="write an interactive page: click a patch, see its nearest patches (one or two backbones)",
        description=(
            "Compute patch features of images once and write ONE self-contained HTML file (no server, no "
            "network): hover or click a patch to see, in every image, its cosine-similarity heat map and "
            "top-k nearest patches; --compare shows a second backbone side by side; PCA colour maps. With "
            "--dataset the masks of a segmentation split colour the retrieved patches by label agreement "
            "and give the retrieval precision of the picked patch. Features are stored PCA-reduced to "
            "--dims dimensions as int8, and the page computes cosines on those."
        ),
    )
    parser.add_argument("inputs", nargs="*", metavar="IMAGES", help="image files and/or folders (recursive)")
    data = parser.add_argument_group("dataset split (instead of IMAGES)")
    data.add_argument("--dataset", help="segmentation dataset name (voc, ade20k, scenes, ...)")
    data.add_argument("--data-root", type=Path, help="dataset root folder")
    data.add_argument("--split", default="val", help="dataset split (default: val)")
    model = parser.add_argument_group("backbones")
    add_backbone_options(model)
    model.add_argument("--compare", help="a second backbone shown side by side (name or file)")
    model.add_argument(
        "--compare-weights", help="weights file for --compare (default: the registered weights of --compare)"
    )
    run = parser.add_argument_group("page")
    run.add_argument("--input-size", type=int, help="square input size (default: 448, a patch multiple)")
    run.add_argument("--k", type=int, default=10, help="nearest patches marked (the page can change it)")
    run.add_argument("--dims", type=int, default=64, help="PCA dimensions stored per patch")
    run.add_argument("--max-images", type=int, default=64, help="at most this many images")
    run.add_argument("--title", help="page title (default: neco explore: the images shown)")
    run.add_argument("--batch-size", type=int, default=16, help="images per backbone forward")
    run.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    run.add_argument("--seed", type=int, default=0, help="seed of --random-init weights")
    run.add_argument("--out", type=Path, default=Path("explore.html"), help="output HTML file")
    run.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out unreadable images (named on the console) instead of stopping at the first",
    )
    parser.set_defaults(func=_run)


def _check(args: argparse.Namespace) -> None:
    if args.dataset is None and not args.inputs:
        raise ValueError("give IMAGES (files or folders) or --dataset NAME --data-root ROOT")
    if args.dataset is not None and args.inputs:
        raise ValueError(f"give IMAGES or --dataset, not both (got {len(args.inputs)} IMAGES and --dataset)")
    if args.dataset is not None and args.data_root is None:
        raise ValueError(f"--dataset {args.dataset} needs --data-root ROOT")
    for option in ("k", "dims", "max_images", "batch_size", "input_size"):
        value = getattr(args, option)
        if value is not None and value < 1:  # --input-size None: the default size
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1 but is {value}")
    if args.out.suffix.lower() not in {".html", ".htm"}:
        raise ValueError(f"--out must name an .html file but is {args.out}")


def _run(args: argparse.Namespace) -> int:
    import torch

    from neco.commands.features import collect_images
    from neco.evaluation.runner import check_divisible, resolve_device
    from neco.explore import dataset_images, load_image_files, load_named_backbone, write_explore

    _check(args)
    started = time.perf_counter()
    device = resolve_device(args.device)
    # The inputs are found before any backbone is loaded: a wrong path fails in a second, not a minute.
    if args.dataset is not None:
        from neco.data import build_segmentation_dataset

        dataset = build_segmentation_dataset(args.dataset, args.data_root, args.split)
    else:
        files = collect_images(args.inputs)
        if len(files) > args.max_images:
            print(f"explore: showing the first {args.max_images} of {len(files)} images (--max-images)")
            files = files[: args.max_images]
    backbones = []
    for offset, spec, weights in ((0, args.backbone, args.weights), (1, args.compare, args.compare_weights)):
        if spec is not None:
            torch.manual_seed(args.seed + offset)  # two --random-init backbones differ, each reproducibly
            backbones.append(
                load_named_backbone(spec, weights=weights, pretrained=not args.random_init, which=args.which)
            )
    patch = int(backbones[0][0].patch_size)
    size = args.input_size or max(1, round(448 / patch)) * patch
    check_divisible(size, patch)
    skipped: list[str] | None = [] if args.skip_bad_images else None
    if args.dataset is not None:
        views = dataset_images(dataset, size, args.max_images, skipped)
        source = f"{args.dataset} {args.split}"
    else:
        views = load_image_files(files, size, skipped)
        source = f"{len(views.names)} images"
    if skipped:
        print(
            f"explore: left out {len(skipped)} unreadable image(s) (--skip-bad-images): {', '.join(skipped[:5])}"
        )
    out = write_explore(
        args.out,
        [(name, model) for model, name in backbones],
        views,
        k=args.k,
        dims=args.dims,
        batch_size=args.batch_size,
        device=device,
        title=args.title or f"neco explore: {source}",
    )
    print(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB, {len(views.names)} images, {size} px, "
        f"{time.perf_counter() - started:.0f} s); open it in a browser"
    )
    return 0
