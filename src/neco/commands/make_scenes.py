"""`neco make-scenes`: write the synthetic texture-scenes dataset (VOC layout) for offline runs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from neco.evaluation.options import add_command, option

__all__ = ["ScenesSettings", "register"]


@dataclass(kw_only=True)
class ScenesSettings:
    """The options of `neco make-scenes`: the arguments of `neco.data.synthetic.write_scenes`."""

    out_dir: str = option(help="output folder", flag="OUT")
    num_train: int = option(64, "training images (default 64)")
    num_val: int = option(16, "validation images (default 16)")
    size: int = option(
        112,
        "image side in pixels (default 112; --size is a deprecated spelling)",
        flag=("--input-size", "--size"),
    )
    seed: int = option(0, "generator seed (default 0)")
    image_format: str = option("jpg", "image files: jpg or png (default jpg)", flag="--format")
    family: str = option(
        "developer",
        "generator family: developer (the demo's) or heldout (other textures and shapes, tuned on nothing)",
        choices=("developer", "heldout"),
    )
    overwrite: bool = option(False, "replace an output made with other settings")
    progress: bool = option(True, "progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `make-scenes` subcommand."""
    add_command(
        subparsers,
        "make-scenes",
        ScenesSettings,
        _run,
        help="write synthetic texture scenes with labels in the Pascal VOC layout",
        description=(
            "Write a deterministic synthetic segmentation dataset: texture-defined classes over a "
            "noise-blob background, in the VOCSegmentation layout (images/, SegmentationClass/, "
            "SegmentationClassAug/, sets/{train,trainaug,val}.txt) plus scenes.json. Read it back with "
            "dataset name 'scenes'. An existing output with the same settings is reused."
        ),
    )


def _run(args: ScenesSettings) -> int:
    import dataclasses
    from pathlib import Path

    from neco.data.synthetic import write_scenes

    manifest = Path(args.out_dir).expanduser() / "scenes.json"
    before = manifest.stat().st_mtime_ns if manifest.is_file() else None
    out = write_scenes(**dataclasses.asdict(args))
    # write_scenes reuses a complete output of the same settings without touching its manifest
    reused = before is not None and manifest.stat().st_mtime_ns == before
    what = "reused the existing" if reused else "wrote"
    print(f"scenes: {what} {args.num_train} train + {args.num_val} val images of {args.size} px in {out}")
    return 0
