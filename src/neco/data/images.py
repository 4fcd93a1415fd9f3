"""Training image sources: unlabeled RGB images from a folder, COCO, ImageNet(-100) or VOC trainaug.

Items are `transform(image)` (or the RGB `PIL.Image` without a transform); grayscale, palette,
RGBA and CMYK files are converted to RGB by `neco.data.base.load_rgb`. Images smaller than a
crop are returned as they are: the multi-crop sampler upsamples them.

A corrupt, truncated or unreadable file is skipped: the item becomes the next readable file in
index order (deterministic), the file is remembered, counted and warned about once. Counting is
per process (each DataLoader worker keeps its own), and the source raises only when the bad
files exceed both `max_bad_fraction` of the files this process tried and `min_bad` files.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from neco.data.base import load_rgb
from neco.data.layout import read_id_list

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_SOURCES",
    "ImageSource",
    "UnreadableImagesError",
    "build_image_source",
    "find_images",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

IMAGE_SOURCES: dict[str, str] = {
    "folder": "every image under a folder, recursively",
    "coco": "COCO train2017: <root>/train2017/*.jpg or <root>/images/train2017/*.jpg",
    "imagenet": "ImageNet / ImageNet-100 class folders: <root>/train/<wnid>/*.JPEG",
    "voc": "Pascal VOC trainaug images: ids of sets/trainaug.txt or ImageSets/Segmentation/trainaug.txt",
}

# What a broken image file raises inside Pillow (DecompressionBombError is not an OSError).
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class UnreadableImagesError(RuntimeError):
    """Too many image files of a source could not be read."""


def find_images(root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All files under `root` (recursive, symlinked folders followed) with an image extension, sorted."""
    root = Path(root).expanduser()
    suffixes = {e.lower() for e in extensions}
    found = []
    for folder, _, files in os.walk(root, followlinks=True):
        found += [Path(folder) / f for f in files if os.path.splitext(f)[1].lower() in suffixes]
    return sorted(found)


class ImageSource(Dataset):
    """A list of image files read as RGB, skipping unreadable ones (see the module docstring)."""

    def __init__(
        self,
        files: Sequence[str | Path],
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        name: str = "images",
        max_bad_fraction: float = 0.01,
        min_bad: int = 5,
        info: dict[str, Any] | None = None,
        budget_option: str = "max_bad_fraction",
    ) -> None:
        if len(files) == 0:
            raise ValueError(f"{name}: no image files given")
        if not 0.0 <= max_bad_fraction < 1.0:
            raise ValueError(f"`max_bad_fraction` must be in [0, 1) but is {max_bad_fraction}")
        if min_bad < 0:
            raise ValueError(f"`min_bad` must be >= 0 but is {min_bad}")
        self.files = [Path(f) for f in files]
        self.transform = transform
        self.name = name
        self.max_bad_fraction = max_bad_fraction
        self.min_bad = min_bad
        self.budget_option = budget_option  # how the caller's user sets `max_bad_fraction`, for messages
        self.info = dict(info or {})
        self._bad: dict[int, str] = {}  # index -> error text, this process only
        self._tried: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_bad(self) -> int:
        """How many files this process found unreadable so far."""
        return len(self._bad)

    @property
    def bad_files(self) -> list[Path]:
        """The unreadable files this process met, in index order."""
        return [self.files[i] for i in sorted(self._bad)]

    def _read(self, index: int) -> Image.Image | None:
        self._tried.add(index)
        try:
            return load_rgb(self.files[index])
        except _READ_ERRORS as err:
            self._bad[index] = f"{type(err).__name__}: {err}"
            warnings.warn(
                f"{self.name}: skipping unreadable image {self.files[index]} ({self._bad[index]})",
                RuntimeWarning,
                stacklevel=3,
            )
            self._check_budget()
            return None

    def _check_budget(self) -> None:
        bad, tried = len(self._bad), max(1, len(self._tried))
        if bad > self.min_bad and bad / tried > self.max_bad_fraction:
            examples = ", ".join(str(p) for p in self.bad_files[:5])
            raise UnreadableImagesError(
                f"{self.name}: {bad} of {tried} image files tried could not be read "
                f"(more than {self.budget_option}={self.max_bad_fraction} of them and more than "
                f"{self.min_bad}); e.g. {examples}. Fix or remove those files, or raise `{self.budget_option}`"
            )

    def load(self, index: int) -> Image.Image:
        """The RGB image at `index`, or the next readable one after it (wrapping around)."""
        count = len(self.files)
        for step in range(count):
            candidate = (index + step) % count
            if candidate in self._bad:
                continue
            image = self._read(candidate)
            if image is not None:
                return image
        raise UnreadableImagesError(f"{self.name}: none of the {count} image files could be read")

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} images")
        image = self.load(index % len(self))
        return self.transform(image) if self.transform is not None else image

    def describe(self) -> dict[str, Any]:
        """Settings that identify this source in a result or config file."""
        return {
            "name": self.name,
            "num_images": len(self),
            "max_bad_fraction": self.max_bad_fraction,
            **self.info,
        }


def _no_images_error(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what}: found no image files in {path} (accepted extensions: {', '.join(IMAGE_EXTENSIONS)}, any case)"
    )


def _folder_files(root: Path) -> tuple[list[Path], dict[str, Any]]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root}: not an existing directory")
    files = find_images(root)
    if not files:
        raise _no_images_error(root, "image folder")
    return files, {"root": str(root)}


def _coco_files(root: Path, split: str = "train2017") -> tuple[list[Path], dict[str, Any]]:
    candidates = [root / split, root / "images" / split, root]
    for folder in candidates:
        if folder.is_dir() and (folder.name == split or folder is not root):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if files:
                return files, {"root": str(folder), "split": split}
    tried = ", ".join(str(c) for c in candidates[:2])
    raise FileNotFoundError(
        f"COCO images: found no {split} folder with images (tried {tried}; expected <root>/{split}/*.jpg "
        f"or <root>/images/{split}/*.jpg; accepted extensions: {', '.join(IMAGE_EXTENSIONS)})"
    )


def _imagenet_files(
    root: Path, split: str = "train", classes: str | Path | Sequence[str] | None = None
) -> tuple[list[Path], dict[str, Any]]:
    folder = root / split if (root / split).is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet: {root} is not an existing directory (expected <root>/{split}/<wnid>/*.JPEG)"
        )
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir())
    if isinstance(classes, (str, Path)):
        class_file = Path(classes).expanduser()
        if not class_file.is_file():
            raise FileNotFoundError(f"`classes` {class_file}: no such file (expected one wnid per line)")
        classes = read_id_list(class_file)
    if classes is not None:
        wanted = list(dict.fromkeys(classes))
        present = {d.name: d for d in class_dirs}
        missing = [c for c in wanted if c not in present]
        if missing:
            raise FileNotFoundError(
                f"ImageNet {folder}: {len(missing)} requested class folders are missing, e.g. {missing[:5]}"
            )
        class_dirs = [present[c] for c in wanted]
    if not class_dirs:
        raise FileNotFoundError(f"ImageNet {folder}: no class folders (expected {folder}/<wnid>/*.JPEG)")
    files = []
    for class_dir in class_dirs:
        files += sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise _no_images_error(folder, "ImageNet class folders")
    return files, {"root": str(folder), "num_classes": len(class_dirs)}


def _voc_files(root: Path, split: str = "trainaug") -> tuple[list[Path], dict[str, Any]]:
    from neco.data.voc import TRAINAUG_HINT, detect_voc_layout

    layout, folder = detect_voc_layout(root)
    image_dir, list_file = (
        (folder / "images", folder / "sets" / f"{split}.txt")
        if layout == "segmentation"
        else (folder / "JPEGImages", folder / "ImageSets" / "Segmentation" / f"{split}.txt")
    )
    for needed in (image_dir, list_file):
        if not needed.exists():
            hint = f"\n{TRAINAUG_HINT}" if split == "trainaug" and needed == list_file else ""
            raise FileNotFoundError(f"VOC images ({layout} layout): missing {needed}{hint}")
    files, missing = [], []
    for image_id in read_id_list(list_file):
        for ext in (".jpg", ".jpeg", ".png"):
            if (image_dir / f"{image_id}{ext}").is_file():
                files.append(image_dir / f"{image_id}{ext}")
                break
        else:
            missing.append(image_id)
    if missing:
        raise FileNotFoundError(
            f"VOC images: {len(missing)} ids of {list_file} have no image in {image_dir}, e.g. {missing[:5]}"
        )
    if not files:
        raise FileNotFoundError(f"VOC images: {list_file} lists no image ids")
    return files, {"root": str(folder), "split": split, "layout": layout}


_FINDERS: dict[str, Callable[..., tuple[list[Path], dict[str, Any]]]] = {
    "folder": _folder_files,
    "coco": _coco_files,
    "imagenet": _imagenet_files,
    "voc": _voc_files,
}
_OPTIONS: dict[str, set[str]] = {
    "folder": set(),
    "coco": {"split"},
    "imagenet": {"split", "classes"},
    "voc": {"split"},
}


def build_image_source(
    kind: str,
    root: str | Path,
    *,
    transform: Callable[[Image.Image], Any] | None = None,
    max_bad_fraction: float = 0.01,
    min_bad: int = 5,
    budget_option: str = "max_bad_fraction",
    **kw: Any,
) -> ImageSource:
    """An `ImageSource` of `kind` (folder, coco, imagenet, voc) under `root`.

    Extra keywords: `split` (coco: train2017; imagenet: train; voc: trainaug) and, for imagenet,
    `classes` (a list of wnids or a file of them, e.g. the ImageNet-100 list).

    Raises:
        ValueError: unknown kind.
        FileNotFoundError: missing folder, or no image files (the message lists the extensions).
    """
    if kind not in _FINDERS:
        raise ValueError(f"`kind` must be one of {sorted(_FINDERS)} but is {kind!r}")
    unknown = sorted(set(kw) - _OPTIONS[kind])
    if unknown:
        raise ValueError(
            f"image source {kind!r} takes the options {sorted(_OPTIONS[kind])} but got {unknown}"
        )
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{kind} images: {root} does not exist ({IMAGE_SOURCES[kind]})")
    files, info = _FINDERS[kind](root, **kw)
    return ImageSource(
        files,
        transform=transform,
        name=f"{kind} images",
        max_bad_fraction=max_bad_fraction,
        min_bad=min_bad,
        info={"kind": kind, **info},
        budget_option=budget_option,
    )
