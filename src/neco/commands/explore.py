"""`neco explore IMAGES... --backbone A [--compare B]`: an interactive nearest-patch page (one HTML file)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from neco.commands._backbone import BackboneSettings
from neco.evaluation.options import add_command, option

__all__ = ["ExploreSettings", "register"]

_DATA = "dataset split (instead of IMAGES)"


@dataclass(kw_only=True)
class ExploreSettings(BackboneSettings):
    """The options of `neco explore`."""

    inputs: list[str] = option(
        [], "image files and/or folders (recursive)", flag="inputs", metavar="IMAGES", nargs="*"
    )
    dataset: str | None = option(None, "segmentation dataset name (voc, ade20k, scenes, ...)", group=_DATA)
    data_root: Path | None = option(None, "dataset root folder", group=_DATA)
    split: str = option("val", "dataset split", group=_DATA)
    compare: str | None = option(None, "a second backbone shown side by side (name or file)")
    compare_weights: str | None = option(
        None, "weights file for --compare (default: the registered weights of --compare)"
    )
    input_size: int | None = option(None, "square input size (default: 448, a patch multiple)", minimum=1)
    k: int = option(10, "nearest patches marked (the page can change it)", minimum=1)
    dims: int = option(64, "PCA dimensions stored per patch", minimum=1)
    max_images: int = option(64, "at most this many images", minimum=1)
    title: str | None = option(None, "page title (default: neco explore: the images shown)")
    batch_size: int = option(16, "images per backbone forward", minimum=1)
    device: str = option("auto", "auto (cuda when available), cpu, cuda, ...")
    seed: int = option(0, "seed of --random-init weights")
    out: Path = option(Path("explore.html"), "output HTML file")
    skip_bad_images: bool = option(
        False, "leave out unreadable images (named on the console) instead of stopping at the first"
    )

    def check(self) -> None:
        """IMAGES or a dataset split, and an .html output."""
        if self.dataset is None and not self.inputs:
            raise ValueError("give IMAGES (files or folders) or --dataset NAME --data-root ROOT")
        if self.dataset is not None and self.inputs:
            raise ValueError(
                f"give IMAGES or --dataset, not both (got {len(self.inputs)} IMAGES and --dataset)"
            )
        if self.dataset is not None and self.data_root is None:
            raise ValueError(f"--dataset {self.dataset} needs --data-root ROOT")
        if Path(self.out).suffix.lower() not in {".html", ".htm"}:
            raise ValueError(f"--out must name an .html file but is {self.out}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `explore` subcommand."""
    add_command(
        subparsers,
        "explore",
        ExploreSettings,
        _run,
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


def _run(args: ExploreSettings) -> int:
    import torch

    from neco.commands.features import collect_images
    from neco.evaluation.runner import check_divisible, resolve_device
    from neco.explore import dataset_images, load_image_files, load_named_backbone, write_explore

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
