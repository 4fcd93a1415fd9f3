"""`neco make-scenes`: write the synthetic texture-scenes dataset (VOC layout) for offline runs."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `make-scenes` subcommand."""
    parser = subparsers.add_parser(
        "make-scenes",
        help="write synthetic texture scenes with labels in the Pascal VOC layout",
        description=(
            "Write a deterministic synthetic segmentation dataset: texture-defined classes over a "
            "noise-blob background, in the VOCSegmentation layout (images/, SegmentationClass/, "
            "SegmentationClassAug/, sets/{train,trainaug,val}.txt) plus scenes.json. Read it back with "
            "dataset name 'scenes'. An existing output with the same settings is reused."
        ),
    )
    parser.add_argument("out", metavar="OUT", help="output folder")
    parser.add_argument("--num-train", type=int, default=64, help="training images (default 64)")
    parser.add_argument("--num-val", type=int, default=16, help="validation images (default 16)")
    parser.add_argument(
        "--input-size",
        "--size",
        dest="size",
        type=int,
        default=112,
        help="image side in pixels (default 112; --size is a deprecated spelling)",
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument(
        "--format", dest="image_format", default="jpg", help="image files: jpg or png (default jpg)"
    )
    parser.add_argument(
        "--family",
        default="developer",
        choices=("developer", "heldout"),
        help="generator family: developer (the demo's) or heldout (other textures and shapes, tuned on nothing)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an output made with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from neco.data.synthetic import write_scenes

    manifest = Path(args.out).expanduser() / "scenes.json"
    before = manifest.stat().st_mtime_ns if manifest.is_file() else None
    out = write_scenes(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        seed=args.seed,
        image_format=args.image_format,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        family=args.family,
    )
    # write_scenes reuses a complete output of the same settings without touching its manifest
    reused = before is not None and manifest.stat().st_mtime_ns == before
    what = "reused the existing" if reused else "wrote"
    print(f"scenes: {what} {args.num_train} train + {args.num_val} val images of {args.size} px in {out}")
    return 0
