"""The explorer's inputs: load images (or a segmentation split) and backbones, compute their features.

`neco.explore.page` writes the page from arrays; this module produces those arrays. Backbones load
through `neco.backbones.loading.load_backbone` (the loading rule of every command) and features come
from `neco.evaluation.features.extract_features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from neco.backbones.loading import load_backbone
from neco.evaluation.features import extract_features
from neco.explore.page import ExploreBackbone, write_explore_html

__all__ = [
    "ExploreImages",
    "load_image_files",
    "dataset_images",
    "load_named_backbone",
    "write_explore",
]


@dataclass
class ExploreImages:
    """Square images as the backbones see them (N, S, S, 3) uint8, their names and optional masks (N, S, S)."""

    images: np.ndarray
    names: list[str]
    masks: np.ndarray | None = None
    class_names: list[str] | None = None
    ignore_index: int = 255


def _square(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _check_size(size: int) -> None:
    if size < 1:
        raise ValueError(f"--input-size must be >= 1 but is {size}")


def load_image_files(
    files: Sequence[str | Path], size: int, skipped: list[str] | None = None
) -> ExploreImages:
    """Read image files as RGB and resize them to `size` x `size` (bilinear, like `neco features`).

    An unreadable file raises `BadImageError` naming it; with a `skipped` list it is left out and its
    path appended there instead (`--skip-bad-images`).
    """
    from neco.data.base import BadImageError, load_rgb

    _check_size(size)
    if not files:
        raise ValueError("no image files given")
    images, names = [], []
    for path in files:
        try:
            images.append(_square(load_rgb(path), size))
        except BadImageError:
            if skipped is None:
                raise
            skipped.append(str(path))
            continue
        names.append(Path(path).name)
    if not images:
        raise ValueError(f"none of the {len(files)} image files could be read, e.g. {files[0]}")
    return ExploreImages(images=np.stack(images), names=names)  # images (N, S, S, 3)


def dataset_images(
    dataset: Any, size: int, max_images: int | None = None, skipped: list[str] | None = None
) -> ExploreImages:
    """The first `max_images` items of a `SegmentationDataset`: images resized bilinearly, masks nearest.

    With a `skipped` list, items whose image cannot be read are left out and named there.
    """
    from neco.data.base import BadImageError

    _check_size(size)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    if count < 1:
        raise ValueError(f"{getattr(dataset, 'name', 'dataset')}: no images to show")
    images, masks, names = [], [], []
    for index in range(count):
        try:
            image, mask = dataset.load(index)
        except BadImageError:
            if skipped is None:
                raise
            pairs = getattr(dataset, "pairs", None)
            skipped.append(str(pairs[index][0]) if pairs else f"image {index}")
            continue
        images.append(_square(image, size))
        label = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]  # (1, 1, H, W)
        resized = torch.nn.functional.interpolate(label, size=(size, size), mode="nearest-exact")
        masks.append(resized[0, 0].long().numpy())
        pairs = getattr(dataset, "pairs", None)
        names.append(Path(pairs[index][0]).name if pairs else f"image {index}")
    if not images:
        raise ValueError(f"{getattr(dataset, 'name', 'dataset')}: none of the {count} images could be read")
    return ExploreImages(
        images=np.stack(images),
        names=names,
        masks=np.stack(masks),
        class_names=list(getattr(dataset, "class_names", []) or []) or None,
        ignore_index=int(getattr(dataset, "ignore_index", 255)),
    )


def load_named_backbone(
    spec: str, *, weights: str | None = None, pretrained: bool = True, which: str = "teacher"
) -> tuple[torch.nn.Module, str]:
    """A backbone from a registry name or neco checkpoint, with a display name (the weights file when given)."""
    model, identity = load_backbone(spec, weights=weights, pretrained=pretrained, which=which)
    name = str(identity["name"])
    source = weights or (spec if spec != name else None)
    if source is not None:
        name += f" ({Path(source).name}, {which})"
    elif not pretrained:
        name += " (random init)"
    return model, name


def write_explore(
    path: str | Path,
    backbones: Sequence[tuple[str, torch.nn.Module]],
    views: ExploreImages,
    *,
    k: int = 10,
    dims: int = 64,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    title: str = "neco explore",
) -> Path:
    """Compute each backbone's patch features of `views` and write the explorer page to `path`.

    Args:
        backbones: one or two (display name, model) pairs; with two, the page shows them side by side.
        views: the images (and masks) to show, e.g. from `load_image_files` or `dataset_images`.
    """
    patches = {int(model.patch_size) for _, model in backbones}
    if len(patches) != 1:
        raise ValueError(f"the backbones must share one patch size but have {sorted(patches)}")
    patch = patches.pop()
    size = views.images.shape[1]
    if size % patch:
        raise ValueError(
            f"--input-size must be a multiple of the patch size {patch} but is {size} "
            f"(e.g. {max(patch, size // patch * patch)})"
        )
    columns = [
        ExploreBackbone(
            name, extract_features(model, views.images, batch_size=batch_size, device=device, progress=False)
        )
        for name, model in backbones
    ]
    return write_explore_html(
        path,
        views.images,
        columns,
        patch_size=patch,
        k=k,
        dims=dims,
        image_names=views.names,
        masks=views.masks,
        class_names=views.class_names,
        ignore_index=views.ignore_index,
        title=title,
    )
