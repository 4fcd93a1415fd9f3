"""`neco features IMAGE_OR_DIR... --backbone NAME -o OUT.pt`: save dense patch-feature grids of images."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "register", "collect_images"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `features` subcommand."""
    parser = subparsers.add_parser(
        "features",
        help="extract patch-feature grids (N, D, h, w) of images",
        description=(
            "Resize each image to SIZE x SIZE (a multiple of the patch size), normalise with the backbone's "
            "mean/std and save the final-LayerNorm patch tokens as a (N, D, SIZE/p, SIZE/p) float32 tensor "
            "together with the image file names."
        ),
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--backbone", required=True, help="registry name (see `neco backbones`)")
    parser.add_argument("--weights", default=None, help="checkpoint of any supported format (default: none)")
    parser.add_argument("--pretrained", action="store_true", help="use the registered pretrained weights")
    parser.add_argument(
        "--which", default="teacher", choices=["teacher", "student"], help="network of a training checkpoint"
    )
    parser.add_argument("--size", type=int, default=448, help="square input size in pixels (default 448)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("-o", "--out", required=True, help="output .pt file")
    parser.set_defaults(func=_run)


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named in `inputs` (files, or folders searched recursively), in a stable order."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"folder {path} holds no image ({sorted(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    return files


def _run(args: argparse.Namespace) -> int:
    import torch
    from torchvision.transforms import functional as TF

    from neco.backbones import create, get_config
    from neco.data.base import load_rgb
    from neco.features import extract_features
    from neco.utils.io import atomic_torch_save

    config = get_config(args.backbone)
    if args.size < config.patch_size or args.size % config.patch_size:
        raise ValueError(
            f"--size must be a positive multiple of the patch size {config.patch_size} but is {args.size}"
        )
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 but is {args.batch_size}")
    files = collect_images(args.inputs)
    model = create(args.backbone, pretrained=args.pretrained, weights=args.weights, which=args.which)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def batches():
        for start in range(0, len(files), args.batch_size):
            images = []
            for path in files[start : start + args.batch_size]:
                image = TF.resize(load_rgb(path), [args.size, args.size], antialias=True)
                tensor = TF.normalize(TF.to_tensor(image), list(config.mean), list(config.std))
                images.append(tensor)
            yield torch.stack(images)  # (B, 3, size, size)

    class _Sized:
        def __len__(self) -> int:
            return (len(files) + args.batch_size - 1) // args.batch_size

        def __iter__(self):
            return batches()

    features = extract_features(model, _Sized(), device=device, progress=True)
    out = atomic_torch_save(
        {
            "features": features,
            "files": [str(f) for f in files],
            "backbone": args.backbone,
            "weights": args.weights,
            "size": args.size,
        },
        args.out,
    )
    print(f"wrote features {tuple(features.shape)} of {len(files)} images to {out}")
    return 0
