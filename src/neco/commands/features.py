"""`neco features IMAGE_OR_DIR... --backbone NAME -o OUT.pt`: save dense patch-feature grids of images."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from neco.commands._backbone import BackboneSettings
from neco.evaluation.options import add_command, option

__all__ = ["FeaturesSettings", "register", "collect_images"]


@dataclass(kw_only=True)
class FeaturesSettings(BackboneSettings):
    """The options of `neco features`."""

    inputs: list[str] = option(help="image files and/or folders (searched recursively)", flag="inputs")
    input_size: int = option(448, "square input size in pixels", minimum=1)
    batch_size: int = option(16, "images per forward pass", minimum=1)
    device: str = option("auto", "auto (cuda when available), cpu, cuda, ...")
    out: str = option(help="output .pt file", flag=("-o", "--out"))
    skip_bad_images: bool = option(
        False, "leave out images that cannot be read (listed in the output and counted) instead of failing"
    )
    force: bool = option(False, "overwrite the output file if it exists")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `features` subcommand."""
    add_command(
        subparsers,
        "features",
        FeaturesSettings,
        _run,
        help="extract patch-feature grids (N, D, h, w) of images",
        description=(
            "Resize each image to INPUT_SIZE x INPUT_SIZE (a multiple of the patch size), normalise with the backbone's "
            "mean/std and save the final-LayerNorm patch tokens as a (N, D, INPUT_SIZE/p, INPUT_SIZE/p) float32 tensor "
            "together with the image file names."
        ),
    )


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named in `inputs` (files, or folders searched recursively), in a stable order."""
    from neco.data.images import IMAGE_EXTENSIONS, find_images

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = find_images(path)
            if not found:
                raise FileNotFoundError(f"folder {path} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    return files


def _run(args: FeaturesSettings) -> int:
    from neco.commands._backbone import load_backbone_of
    from neco.data.base import BadImageError
    from neco.evaluation.features import extract_features
    from neco.evaluation.runner import check_divisible, resolve_device
    from neco.explore import load_image_files
    from neco.utils.io import atomic_torch_save, check_new_file

    check_new_file(args.out, args.force)
    device = resolve_device(args.device)
    model, identity = load_backbone_of(args)
    check_divisible(args.input_size, int(model.patch_size))
    files = collect_images(args.inputs)
    skipped: list[str] | None = [] if args.skip_bad_images else None
    try:  # resized like `neco explore` (bilinear), normalised with the backbone's own mean / std
        views = load_image_files(files, args.input_size, skipped)
    except BadImageError as err:
        raise ValueError(f"{err}; pass --skip-bad-images to leave unreadable images out") from None
    features = extract_features(model, views.images, batch_size=args.batch_size, device=device)
    skipped = skipped or []
    kept = [str(f) for f in files if str(f) not in skipped]
    out = atomic_torch_save(
        {
            "features": features,
            "files": kept,
            "skipped_images": skipped,
            "backbone": identity,
            "input_size": args.input_size,
        },
        args.out,
    )
    more = ", ..." if len(skipped) > 1 else ""
    note = f" (skipped {len(skipped)} unreadable: {skipped[0]}{more})" if skipped else ""
    print(f"wrote features {tuple(features.shape)} of {len(kept)} images to {out}{note}")
    return 0
