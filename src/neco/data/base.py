"""The segmentation-dataset interface shared by every loader and every evaluation protocol.

A dataset is a list of (image file, label file) pairs plus what is needed to read the labels:
number of classes, class names, the ignore label and an optional lookup table from raw label
values to train ids. Items are `(image, mask)`: an RGB `PIL.Image` and an `int64` numpy array
(H, W) with values in [0, num_classes) or `ignore_index`. Evaluations apply their own joint
transforms through `transform(image, mask)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["BadImageError", "SegmentationDataset", "load_rgb", "load_label"]

JointTransform = Callable[[Image.Image, np.ndarray], Any]


# What a broken image file raises inside Pillow (DecompressionBombError is not an OSError).
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadImageError(ValueError):
    """An image or label file that Pillow cannot read; the message names the file."""

    def __init__(self, path: str | Path, kind: str, err: BaseException) -> None:
        size = Path(path).stat().st_size if Path(path).is_file() else None
        what = "an empty (0-byte) file" if size == 0 else f"{type(err).__name__}: {err}"
        super().__init__(f"{kind} file {path} is not a readable image ({what})")
        self.path = Path(path)


def load_rgb(path: str | Path) -> Image.Image:
    """Read an image file as RGB (grayscale incl. 16-bit, palette, RGBA and CMYK are converted).

    Raises:
        BadImageError: the file is empty, truncated or not an image (the message names it).
    """
    try:
        return _load_rgb(path)
    except FileNotFoundError:
        raise
    except _READ_ERRORS as err:
        raise BadImageError(path, "image", err) from err


def _load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, image).convert("RGB")
        if image.mode.startswith("I;16") or image.mode == "I":
            # 16-bit grayscale: PIL's RGB conversion clips values above 255 (a 16-bit image turns white).
            deep = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
            image = Image.fromarray(np.round(deep * (255 / 65535)).astype(np.uint8), mode="L")
        return image.convert("RGB")


def load_label(path: str | Path) -> np.ndarray:
    """Read a label PNG as raw integer values (palette indices for palette PNGs)."""
    try:
        with Image.open(path) as label:
            array = np.array(label)
    except FileNotFoundError:
        raise
    except _READ_ERRORS as err:
        raise BadImageError(path, "label", err) from err
    if array.ndim == 3:
        raise ValueError(
            f"label file {path}: expected a single-channel (L or P mode) PNG, got {array.shape[2]} channels"
        )
    return array.astype(np.int64)


class SegmentationDataset(Dataset):
    """(image, mask) pairs with class metadata; see the module docstring for the item format."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        *,
        name: str,
        split: str,
        class_names: Sequence[str],
        ignore_index: int = 255,
        label_map: np.ndarray | None = None,
        transform: JointTransform | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        if len(pairs) == 0:
            raise ValueError(f"{name} {split}: no (image, label) pairs found")
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.name = name
        self.split = split
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        self.label_map = label_map
        self.transform = transform
        # loader-specific settings that change a number (layout, label set, label mapping)
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """Read item `index` without the transform: RGB image and train-id mask."""
        image_path, label_path = self.pairs[index]
        image = load_rgb(image_path)
        mask = load_label(label_path)
        if self.label_map is not None:
            mask = self.label_map[np.clip(mask, 0, len(self.label_map) - 1)]
        self._check_labels(mask, label_path)
        if mask.shape != (image.height, image.width):
            raise ValueError(
                f"{label_path}: label size {mask.shape[1]}x{mask.shape[0]} does not match image "
                f"{image_path} size {image.width}x{image.height}"
            )
        return image, mask

    def _check_labels(self, mask: np.ndarray, label_path: Path) -> None:
        """Refuse train ids outside [0, num_classes) other than `ignore_index`, naming the file."""
        bad = (mask < 0) | ((mask >= self.num_classes) & (mask != self.ignore_index))
        if bad.any():
            values = np.unique(mask[bad])
            shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
            raise ValueError(
                f"label file {label_path}: values [{shown}] ({int(bad.sum())} pixels) are outside the "
                f"{self.num_classes} classes of {self.name} (ids 0..{self.num_classes - 1}, ignore "
                f"{self.ignore_index}); the mask is corrupt or belongs to another dataset"
            )

    def without_unreadable_images(self) -> tuple[SegmentationDataset, list[str]]:
        """This dataset without the items whose image cannot be read, and those images' paths.

        Reads every image once; for evaluations that opt in to skipping (a skip is recorded in the result).
        """
        keep, skipped = [], []
        for index, (image_path, _) in enumerate(self.pairs):
            try:
                load_rgb(image_path)
                keep.append(index)
            except BadImageError:
                skipped.append(str(image_path))
        if not skipped:
            return self, []
        if not keep:
            raise ValueError(f"{self.name} {self.split}: no readable image among {len(self)} files")
        subset = self.subset(keep)
        subset.info = {**self.info, "skipped_images": skipped}
        return subset, skipped

    def __getitem__(self, index: int) -> Any:
        image, mask = self.load(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask

    def subset(self, indices: Sequence[int]) -> SegmentationDataset:
        """A dataset over the given item indices, sharing metadata and transform."""
        return SegmentationDataset(
            [self.pairs[i] for i in indices],
            name=self.name,
            split=self.split,
            class_names=self.class_names,
            ignore_index=self.ignore_index,
            label_map=self.label_map,
            transform=self.transform,
            info=self.info,
        )

    def fraction(self, fraction: float, seed: int = 0) -> SegmentationDataset:
        """A seeded random subset holding `fraction` of the items (at least one)."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1] but is {fraction}")
        if fraction == 1.0:
            return self
        count = max(1, int(round(len(self) * fraction)))
        order = np.random.default_rng(seed).permutation(len(self))[:count]
        subset = self.subset(sorted(order.tolist()))
        subset.info.update(fraction=fraction, fraction_seed=seed)
        return subset

    def describe(self) -> dict[str, Any]:
        """Settings that identify this dataset in a result file."""
        return {
            "name": self.name,
            "split": self.split,
            "num_images": len(self),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            **self.info,
        }
