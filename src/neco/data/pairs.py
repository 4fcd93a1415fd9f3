"""Synthetic correspondence pairs: two views of one generated scene under a known similarity transform.

A canonical texture scene (`neco.data.synthetic.generate_scene`) is drawn once; each view is a
crop of it with its own scale, small rotation, optional horizontal flip and aspect ratio, rendered
by bilinear sampling. Keypoints are pixels of one object class (the pair's category) that both
views see, so the ground-truth correspondence of every keypoint is exact. With
`coordinates=True` the views show the canonical coordinates themselves (red = x, green = y, as
fractions of the canvas) instead of the texture: the same geometry and keypoints, used by tests
as an oracle input whose features are the true scene coordinates.

Conventions (as in `neco.data.spair`): keypoints are continuous pixel positions (x, y) with an
image spanning [0, W] x [0, H] (pixel (i, j) is the unit square at column j, row i; its centre is
(j + 0.5, i + 0.5)); boxes are [x1, y1, x2, y2] of the object's pixels in the same coordinates.
Variation labels: viewpoint from the rotation difference (< 5 deg none, < 10 small, else large),
scale from the ratio of the two view scales (< 1.15 none, < 1.4 small, else large), truncation
from the object's box touching a view border (0 none, 1 source, 2 target, 3 both); occlusion is
not modelled (always 0). `write_spair_pairs` saves pairs in the SPair-71k layout.

numpy and Pillow only (no torch). Pair `i` depends only on (seed, i) and the settings.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from neco.data.spair import CorrespondencePair
from neco.data.synthetic import SCENE_CLASSES, generate_scene
from neco.utils.io import atomic_open, write_json

__all__ = ["SyntheticPair", "SyntheticPairs", "generate_pair", "write_spair_pairs", "PAIRS_FORMAT"]

PAIRS_FORMAT = "neco-synthetic-pairs"
_VERSION = 1
_IMAGE_FORMATS = {"jpg": "JPEG, quality 95, no chroma subsampling", "png": "lossless PNG"}


@dataclass
class SyntheticPair:
    """Two rendered views with exact keypoint correspondences and the view -> canonical maps."""

    src_image: np.ndarray  # (H1, W1, 3) uint8
    trg_image: np.ndarray  # (H2, W2, 3) uint8
    src_kps: np.ndarray  # (K, 2) float64 (x, y)
    trg_kps: np.ndarray  # (K, 2)
    src_bbox: np.ndarray  # (4,) x1, y1, x2, y2
    trg_bbox: np.ndarray  # (4,)
    category: str
    variations: dict[str, int]
    mirror: int
    src_to_canonical: np.ndarray  # (2, 3) affine: canonical = A @ [x, y, 1]
    trg_to_canonical: np.ndarray  # (2, 3)
    canonical_size: int

    def to_correspondence(self, name: str = "") -> CorrespondencePair:
        """The pair as a `CorrespondencePair` (the item type of the SPair loader)."""
        return CorrespondencePair(
            src_image=Image.fromarray(self.src_image),
            trg_image=Image.fromarray(self.trg_image),
            src_kps=self.src_kps.copy(),
            trg_kps=self.trg_kps.copy(),
            src_bbox=self.src_bbox.copy(),
            trg_bbox=self.trg_bbox.copy(),
            category=self.category,
            variations=dict(self.variations),
            name=name,
            kps_ids=[str(i) for i in range(len(self.src_kps))],
            mirror=self.mirror,
        )


def _view_map(
    rng: np.random.Generator, canvas: int, width: int, height: int, max_rotation: float, flip: bool
) -> tuple[np.ndarray, float, float]:
    """A random view -> canonical affine (2, 3) whose view rectangle lies inside the canvas."""
    theta = math.radians(rng.uniform(-max_rotation, max_rotation))
    c, s = math.cos(theta), math.sin(theta)
    # half-extents on the canvas of the rotated view rectangle, per unit scale
    ex = width / 2 * abs(c) + height / 2 * abs(s)
    ey = width / 2 * abs(s) + height / 2 * abs(c)
    scale_max = (canvas / 2) / max(ex, ey)
    scale = scale_max * rng.uniform(0.6, 1.0)  # canonical pixels per view pixel
    cx = rng.uniform(scale * ex, canvas - scale * ex)
    cy = rng.uniform(scale * ey, canvas - scale * ey)
    linear = scale * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flip else 1.0, 1.0])  # (2, 2)
    offset = np.array([cx, cy]) - linear @ np.array([width / 2, height / 2])
    return np.concatenate([linear, offset[:, None]], axis=1), math.degrees(theta), scale


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:, :2].T + affine[:, 2]  # (N, 2)


def _invert(affine: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(affine[:, :2])
    return np.concatenate([inverse, (-inverse @ affine[:, 2])[:, None]], axis=1)


def _view_grid(affine: np.ndarray, width: int, height: int) -> np.ndarray:
    """Canonical continuous coordinates of every view pixel centre: (H, W, 2)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)  # (H*W, 2)
    return _apply(affine, points).reshape(height, width, 2)


def _sample_bilinear(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bilinear samples of (S, S, C) at continuous coords (H, W, 2), edges replicated."""
    size_y, size_x = image.shape[:2]
    # continuous coordinate p lies between pixel centres floor(p - 0.5) and the next one
    u = np.clip(coords[..., 0] - 0.5, 0, size_x - 1)
    v = np.clip(coords[..., 1] - 0.5, 0, size_y - 1)
    x0 = np.minimum(np.floor(u).astype(np.int64), size_x - 2)
    y0 = np.minimum(np.floor(v).astype(np.int64), size_y - 2)
    fx, fy = (u - x0)[..., None], (v - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _sample_nearest(labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    size = labels.shape[0]
    x = np.clip(np.floor(coords[..., 0]).astype(np.int64), 0, size - 1)
    y = np.clip(np.floor(coords[..., 1]).astype(np.int64), 0, size - 1)
    return labels[y, x]


def _box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)


def _coordinate_image(canvas: int) -> np.ndarray:
    """(S, S, 3) float: red = x / S, green = y / S of each pixel centre (x 255), blue constant."""
    centres = (np.arange(canvas) + 0.5) / canvas * 255.0
    image = np.empty((canvas, canvas, 3))
    image[..., 0] = centres[None, :]
    image[..., 1] = centres[:, None]
    image[..., 2] = 128.0
    return image


def _variation(value: float, limits: tuple[float, float]) -> int:
    return 0 if value < limits[0] else 1 if value < limits[1] else 2


def generate_pair(
    rng: np.random.Generator,
    size: int = 96,
    *,
    num_keypoints: int = 8,
    max_rotation: float = 15.0,
    flip_p: float = 0.5,
    aspect_range: tuple[float, float] = (0.75, 1.0),
    coordinates: bool = False,
    margin: float = 2.0,
    max_tries: int = 20,
) -> SyntheticPair:
    """One synthetic pair; views are `size` wide and `size * aspect` high.

    Args:
        rng: numpy Generator; the pair is a deterministic function of its state.
        size: view width in pixels (>= 32).
        num_keypoints: keypoints sampled on the category's object (fewer if it shows fewer pixels).
        max_rotation: largest rotation of a view in degrees.
        flip_p: probability that the target view is mirrored horizontally.
        aspect_range: range of view height / width.
        coordinates: render canonical coordinates instead of the texture (oracle input for tests).
        margin: keypoints keep this many pixels from every view border.
        max_tries: scenes drawn before giving up when no object is seen by both views.
    """
    if size < 32:
        raise ValueError(f"`size` must be >= 32 but is {size}")
    if num_keypoints < 1:
        raise ValueError(f"`num_keypoints` must be >= 1 but is {num_keypoints}")
    if not 0 < aspect_range[0] <= aspect_range[1] <= 1:
        raise ValueError(f"`aspect_range` must satisfy 0 < low <= high <= 1 but is {aspect_range}")
    canvas = int(round(size * 1.5))
    for _ in range(max_tries):
        scene, labels = generate_scene(rng, canvas)
        flips = (False, bool(rng.uniform() < flip_p))
        views = []
        for flip in flips:
            height = int(round(size * rng.uniform(*aspect_range)))
            affine, angle, scale = _view_map(rng, canvas, size, height, max_rotation, flip)
            views.append((affine, angle, scale, size, height))
        # canonical pixel centres of object pixels that both views show away from their borders
        ys, xs = np.nonzero(labels > 0)
        points = np.stack([xs, ys], axis=1) + rng.uniform(0.0, 1.0, size=(len(xs), 2))  # (N, 2)
        inside = np.ones(len(points), dtype=bool)
        for affine, _, _, width, height in views:
            local = _apply(_invert(affine), points)
            inside &= (local[:, 0] >= margin) & (local[:, 0] <= width - margin)
            inside &= (local[:, 1] >= margin) & (local[:, 1] <= height - margin)
        if not inside.any():
            continue
        classes, counts = np.unique(labels[ys[inside], xs[inside]], return_counts=True)
        category_id = int(classes[np.argmax(counts)])
        candidates = np.nonzero(inside & (labels[ys, xs] == category_id))[0]
        chosen = rng.choice(candidates, size=min(num_keypoints, len(candidates)), replace=False)
        canonical_kps = points[np.sort(chosen)]
        break
    else:
        raise RuntimeError(f"no object visible in both views after {max_tries} scenes (size {size})")

    source = _coordinate_image(canvas) if coordinates else scene.astype(np.float64)
    rendered, kps, boxes, touches = [], [], [], []
    for affine, _, _, width, height in views:
        grid = _view_grid(affine, width, height)
        rendered.append(np.clip(np.rint(_sample_bilinear(source, grid)), 0, 255).astype(np.uint8))
        kps.append(_apply(_invert(affine), canonical_kps))
        box = _box(_sample_nearest(labels, grid) == category_id)
        boxes.append(box)
        touches.append(bool(box[0] <= 0 or box[1] <= 0 or box[2] >= width or box[3] >= height))
    rotation = abs(views[0][1] - views[1][1])
    scale_ratio = max(views[0][2], views[1][2]) / min(views[0][2], views[1][2])
    variations = {
        "viewpoint_variation": _variation(rotation, (5.0, 10.0)),
        "scale_variation": _variation(scale_ratio, (1.15, 1.4)),
        "truncation": int(touches[0]) + 2 * int(touches[1]),
        "occlusion": 0,
    }
    return SyntheticPair(
        src_image=rendered[0],
        trg_image=rendered[1],
        src_kps=kps[0],
        trg_kps=kps[1],
        src_bbox=boxes[0],
        trg_bbox=boxes[1],
        category=SCENE_CLASSES[category_id],
        variations=variations,
        mirror=int(flips[0] != flips[1]),
        src_to_canonical=views[0][0],
        trg_to_canonical=views[1][0],
        canonical_size=canvas,
    )


def _pair_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 71, index])


class SyntheticPairs:
    """In-memory synthetic pairs; items are `CorrespondencePair`s like `SPairDataset`'s."""

    def __init__(self, num_pairs: int, size: int = 96, seed: int = 0, **pair_options: Any) -> None:
        if num_pairs < 1:
            raise ValueError(f"`num_pairs` must be >= 1 but is {num_pairs}")
        self.num_pairs, self.size, self.seed = num_pairs, size, seed
        self.pair_options = pair_options

    def __len__(self) -> int:
        return self.num_pairs

    def pair(self, index: int) -> SyntheticPair:
        """The full synthetic pair `index` (with its view -> canonical maps)."""
        if not 0 <= index < self.num_pairs:
            raise IndexError(f"pair index {index} out of range 0..{self.num_pairs - 1}")
        return generate_pair(_pair_rng(self.seed, index), self.size, **self.pair_options)

    def __getitem__(self, index: int) -> CorrespondencePair:
        return self.pair(index).to_correspondence(name=f"synthetic-{index:06d}")


def _save_image(image: np.ndarray, path: Path, image_format: str) -> None:
    with atomic_open(path, "wb") as handle:
        if image_format == "jpg":
            Image.fromarray(image).save(handle, format="JPEG", quality=95, subsampling=0)
        else:
            Image.fromarray(image).save(handle, format="PNG", compress_level=1)


def _round(points: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in points]


_OWNED = ("JPEGImages", "PairAnnotation", "ImageAnnotation", "pairs.json")


def write_spair_pairs(
    out_dir: str | Path,
    num_pairs: int = 16,
    size: int = 96,
    seed: int = 0,
    *,
    split: str = "test",
    image_format: str = "jpg",
    overwrite: bool = False,
    progress: bool = True,
    **pair_options: Any,
) -> Path:
    """Write synthetic pairs in the SPair-71k layout (images, pair and image annotations); return `out_dir`.

    Each pair gets its own two images `<pair:06d>_src` / `_trg` under `JPEGImages/<category>/`.
    `image_format` "png" keeps pixels exact (the `.jpg` folder name is SPair's, the files are PNG).
    A folder that is not empty raises FileExistsError unless `overwrite`, which replaces only the
    folders this function writes.
    """
    from tqdm.auto import tqdm

    if image_format not in _IMAGE_FORMATS:
        raise ValueError(f"`image_format` must be one of {sorted(_IMAGE_FORMATS)} but is {image_format!r}")
    if split not in ("trn", "val", "test"):
        raise ValueError(f"`split` must be one of ['test', 'trn', 'val'] but is {split!r}")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"pairs output {out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"pairs output {out_dir}: the folder is not empty; choose another folder or pass overwrite=True"
            )
        for name in _OWNED:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    pairs = SyntheticPairs(num_pairs, size, seed, **pair_options)
    (out_dir / "PairAnnotation" / split).mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(num_pairs), desc="synthetic pairs", disable=not progress, leave=False):
        pair = pairs.pair(index)
        names = {}
        for side, image, kps, box in (
            ("src", pair.src_image, pair.src_kps, pair.src_bbox),
            ("trg", pair.trg_image, pair.trg_kps, pair.trg_bbox),
        ):
            stem = f"{index:06d}_{side}"
            names[side] = f"{stem}.{image_format}"
            for folder in ("JPEGImages", "ImageAnnotation"):
                (out_dir / folder / pair.category).mkdir(parents=True, exist_ok=True)
            _save_image(image, out_dir / "JPEGImages" / pair.category / names[side], image_format)
            height, width = image.shape[:2]
            write_json(
                {
                    "filename": names[side],
                    "src_database": PAIRS_FORMAT,
                    "image_width": width,
                    "image_height": height,
                    "image_depth": 3,
                    "category": pair.category,
                    "bndbox": box.tolist(),
                    "kps": {str(i): point for i, point in enumerate(_round(kps))},
                    "truncated": int(pair.variations["truncation"] & (1 if side == "src" else 2) > 0),
                    "occluded": 0,
                },
                out_dir / "ImageAnnotation" / pair.category / f"{stem}.json",
            )
        filename = f"{index:06d}-{index:06d}_src-{index:06d}_trg:{pair.category}"
        write_json(
            {
                "pair_id": index,
                "filename": filename,
                "src_imname": names["src"],
                "trg_imname": names["trg"],
                "src_imsize": [pair.src_image.shape[1], pair.src_image.shape[0], 3],
                "trg_imsize": [pair.trg_image.shape[1], pair.trg_image.shape[0], 3],
                "src_bndbox": pair.src_bbox.tolist(),
                "trg_bndbox": pair.trg_bbox.tolist(),
                "category": pair.category,
                "src_pose": "unspecified",
                "trg_pose": "unspecified",
                "src_kps": _round(pair.src_kps),
                "trg_kps": _round(pair.trg_kps),
                "kps_ids": [str(i) for i in range(len(pair.src_kps))],
                **pair.variations,
                "mirror": pair.mirror,
            },
            out_dir / "PairAnnotation" / split / f"{filename}.json",
        )
    write_json(
        {
            "format": PAIRS_FORMAT,
            "version": _VERSION,
            "num_pairs": num_pairs,
            "size": size,
            "seed": seed,
            "split": split,
            "image_format": image_format,
            "pair_options": {k: list(v) if isinstance(v, tuple) else v for k, v in pair_options.items()},
        },
        out_dir / "pairs.json",
    )
    return out_dir
