"""Image-caption pairs for text alignment: COCO Captions layout, a folder of image + caption files.

Items are `(image, index)`: the transformed image and the index of the caption in `captions` (every
caption of every image is one item, so an epoch sees each caption once). Layouts:

- `coco`: `ROOT/annotations/captions_<split>.json` (COCO Captions: `images` with `id` and
  `file_name`, `annotations` with `image_id` and `caption`) and the images in `ROOT/<split>/`;
- `folder`: image files (jpg, jpeg, png, bmp, webp) in `ROOT` (recursively), each with a text file
  of the same name and suffix `.txt` beside it holding one caption per non-empty line.

A missing annotation file, an image without a caption, a caption without an image and an empty
caption file are errors that name the file: nothing is dropped silently.
`write_scene_captions` turns a synthetic scenes output into either layout, with captions that name
the texture classes present in each scene; `tint_scenes` copies a scenes output with every class
tinted by its own colour (the tiny test backbone's patch features do not separate the untinted
texture classes, see docs/benchmarks.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from neco.data.base import load_label, load_rgb

__all__ = [
    "CAPTION_LAYOUTS",
    "CaptionPairs",
    "build_caption_dataset",
    "build_coco_captions",
    "build_caption_folder",
    "write_scene_captions",
    "tint_scenes",
]

CAPTION_LAYOUTS: dict[str, str] = {
    "coco": "COCO Captions: ROOT/annotations/captions_<split>.json + ROOT/<split>/ images",
    "folder": "a folder of images, each with a <same name>.txt of captions (one per line)",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class CaptionPairs(Dataset):
    """(transformed image, caption index) items over every caption of every image."""

    def __init__(
        self,
        images: Sequence[Path],
        captions: Sequence[str],
        image_of: Sequence[int],
        *,
        name: str,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if len(captions) == 0:
            raise ValueError(f"{name}: no captions found")
        if len(captions) != len(image_of):
            raise ValueError(f"{name}: {len(captions)} captions but {len(image_of)} image indices")
        self.images = [Path(p) for p in images]
        self.captions = list(captions)
        self.image_of = np.asarray(image_of, dtype=np.int64)
        self.name, self.transform = name, transform

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = load_rgb(self.images[int(self.image_of[index])])
        return (self.transform(image) if self.transform is not None else image), int(index)

    def describe(self) -> dict[str, Any]:
        """Identity of the pairs for a run record."""
        return {"name": self.name, "num_images": len(self.images), "num_captions": len(self.captions)}


def build_coco_captions(root: str | Path, split: str = "train2017", **kw: Any) -> CaptionPairs:
    """COCO Captions `split` under `root` (see the module docstring)."""
    root = Path(root).expanduser()
    annotations = root / "annotations" / f"captions_{split}.json"
    image_dir = root / split
    expected = f"expected {root}/annotations/captions_{split}.json and {root}/{split}/<file_name> images"
    if not annotations.is_file():
        raise FileNotFoundError(f"COCO Captions {root}: missing caption file {annotations} ({expected})")
    try:
        content = json.loads(annotations.read_text())
        entries, notes = content["images"], content["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"caption file {annotations}: not COCO Captions JSON with `images` and `annotations` ({err})"
        ) from err
    order = {int(e["id"]): i for i, e in enumerate(entries)}
    images = [image_dir / e["file_name"] for e in entries]
    captions, image_of, unknown = [], [], []
    for note in notes:
        index = order.get(int(note["image_id"]))
        if index is None:
            unknown.append(int(note["image_id"]))
            continue
        captions.append(str(note["caption"]).strip())
        image_of.append(index)
    if unknown:
        raise ValueError(
            f"caption file {annotations}: {len(unknown)} caption(s) name image ids absent from its `images` "
            f"(e.g. {sorted(set(unknown))[:5]})"
        )
    _check_every_image_captioned(images, image_of, annotations)
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"COCO Captions {root}: {len(missing)} image(s) listed in {annotations.name} are missing "
            f"(e.g. {missing[0]}); {expected}"
        )
    return CaptionPairs(images, captions, image_of, name=f"coco-captions/{split}", **kw)


def build_caption_folder(root: str | Path, **kw: Any) -> CaptionPairs:
    """Images with same-name `.txt` caption files under `root` (see the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"caption folder {root}: not a directory")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise FileNotFoundError(f"caption folder {root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    uncaptioned = [p for p in images if not p.with_suffix(".txt").is_file()]
    if uncaptioned:
        raise ValueError(
            f"caption folder {root}: {len(uncaptioned)} image(s) have no caption file, e.g. {uncaptioned[0]} "
            f"needs {uncaptioned[0].with_suffix('.txt')} (one caption per line)"
        )
    stems = {p.with_suffix("") for p in images}
    orphans = sorted(p for p in root.rglob("*.txt") if p.with_suffix("") not in stems)
    if orphans:
        raise ValueError(
            f"caption folder {root}: {len(orphans)} caption file(s) have no image beside them, e.g. {orphans[0]}"
        )
    captions, image_of = [], []
    for index, image in enumerate(images):
        lines = [line.strip() for line in image.with_suffix(".txt").read_text().splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            raise ValueError(
                f"caption file {image.with_suffix('.txt')}: empty (image {image} has no caption)"
            )
        captions += lines
        image_of += [index] * len(lines)
    return CaptionPairs(images, captions, image_of, name=f"caption-folder/{root.name}", **kw)


def _check_every_image_captioned(images: list[Path], image_of: list[int], source: Path) -> None:
    counts = np.bincount(np.asarray(image_of, dtype=np.int64), minlength=len(images))
    bare = [images[i].name for i in np.flatnonzero(counts == 0)]
    if bare:
        raise ValueError(
            f"caption file {source}: {len(bare)} image(s) have no caption (e.g. {bare[:3]}); "
            "remove them from `images` or add their captions"
        )


def build_caption_dataset(layout: str, root: str | Path, split: str = "train2017", **kw: Any) -> CaptionPairs:
    """Image-caption pairs of `layout` (see CAPTION_LAYOUTS); `split` is used by the COCO layout."""
    if layout == "coco":
        return build_coco_captions(root, split, **kw)
    if layout == "folder":
        return build_caption_folder(root, **kw)
    raise ValueError(f"`--layout` must be one of {sorted(CAPTION_LAYOUTS)} but is {layout!r}")


def _scene_captions(names: list[str], rng: np.random.Generator) -> list[str]:
    """Two captions naming the classes of one scene in shuffled orders."""
    words = [n.replace("-", " ") for n in names] or ["nothing"]
    captions = []
    for template in ("a scene with {}", "{} on a noisy background"):
        order = [words[i] for i in rng.permutation(len(words))]
        listed = order[0] if len(order) == 1 else ", ".join(order[:-1]) + " and " + order[-1]
        captions.append(template.format(listed))
    return captions


def write_scene_captions(
    scenes_root: str | Path,
    out: str | Path,
    layout: str,
    split: str = "train",
    *,
    min_fraction: float = 0.02,
    seed: int = 0,
) -> Path:
    """Write the `split` scenes of a `neco make-scenes` output as a caption dataset of `layout` in `out`.

    Each scene gets two captions naming the object classes covering at least `min_fraction` of it
    (background is not named). COCO layout: split folder `train2017`; returns `out`.
    """
    from neco.data.factory import build_scenes

    if layout not in CAPTION_LAYOUTS:
        raise ValueError(f"`layout` must be one of {sorted(CAPTION_LAYOUTS)} but is {layout!r}")
    scenes = build_scenes(scenes_root, split)
    out = Path(out)
    image_dir = out / "train2017" if layout == "coco" else out
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries, notes = [], []
    for index, (image_path, label_path) in enumerate(scenes.pairs):
        label = load_label(label_path)
        present = [c for c in range(1, scenes.num_classes) if (label == c).mean() >= min_fraction]
        captions = _scene_captions([scenes.class_names[c] for c in present], rng)
        target = image_dir / image_path.name
        target.write_bytes(image_path.read_bytes())
        if layout == "folder":
            target.with_suffix(".txt").write_text("\n".join(captions) + "\n")
        else:
            entries.append({"id": index, "file_name": image_path.name})
            notes += [{"id": len(notes) + k, "image_id": index, "caption": c} for k, c in enumerate(captions)]
    if layout == "coco":
        (out / "annotations").mkdir(exist_ok=True)
        content = {"images": entries, "annotations": notes}
        (out / "annotations" / "captions_train2017.json").write_text(json.dumps(content))
    return out


def tint_scenes(scenes_root: str | Path, out: str | Path, strength: float = 0.8, seed: int = 123) -> Path:
    """Copy a scenes output to `out` with each pixel blended towards a fixed colour of its class.

    pixel = (1 - strength) * pixel + strength * colour[class]; colours are drawn once from `seed`.
    Returns `out` (a scenes output: `neco eval --dataset scenes --data-root OUT` reads it).
    """
    import shutil

    from PIL import Image

    from neco.data.factory import build_scenes

    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"`strength` must be in [0, 1] but is {strength}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"tinted scenes {out}: already exists; choose another folder or delete it")
    shutil.copytree(scenes_root, out)
    for split in ("train", "val"):
        scenes = build_scenes(out, split)
        colours = np.random.default_rng(seed).integers(0, 256, (scenes.num_classes, 3)).astype(np.float32)
        for image_path, label_path in scenes.pairs:
            label = np.clip(load_label(label_path), 0, scenes.num_classes - 1)
            image = np.asarray(load_rgb(image_path), dtype=np.float32)
            tinted = (1 - strength) * image + strength * colours[label]
            Image.fromarray(np.clip(np.rint(tinted), 0, 255).astype(np.uint8)).save(image_path, quality=95)
    return out
