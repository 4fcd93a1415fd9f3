"""`neco eval correspondence` (Probe3D's protocol) and Probe3D's own code on one SPair-layout folder.

Probe3D (github.com/mbanani/probe3d, read-only snapshot in `../shared/refs/probe3d`) is imported
from its folder and run as it is, with its GPU and logging dependencies neutralised: `.cuda()` is
the identity, `faiss.StandardGpuResources` a dummy, and hydra / loguru / omegaconf (needed only by
its command-line entry point) small stand-ins. Its `main` runs over every class and viewpoint
bucket with the same feature function neco gets. Probe3D lists the pair files with `glob`, whose
order is the file system's; the test makes it sorted, the order neco shuffles (docs/evaluation.md).

The folder is written here in the published SPair-71k format: JPEG images shared by several pairs,
per-image annotations with keypoints as {"id": [x, y] | null}, segmentation PNGs with class ids,
pair files whose `src_kps` / `trg_kps` are the keypoints annotated in both images, a `trn` pair
that the test split must not read, and categories with an empty viewpoint bucket.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from toy import run_protocol

from neco.data.spair import build_spair
from neco.evaluation.blocks.keypoints import PROBE3D_BUCKETS, pad_to_patches, probe3d_sample
from neco.evaluation.protocols.correspondence import CorrespondenceSettings

REPO = Path(__file__).resolve().parents[2]
PATCH = 8
NUM_KPS = 6
CAP = 3  # Probe3D's num_instances (200) scaled to the folder: the cap binds in most buckets
# category -> (images, viewpoint labels drawn from)
CATEGORIES = {"aeroplane": (5, (0, 1, 2)), "cat": (5, (0, 1)), "dog": (4, (0, 1, 2))}
CLASS_IDS = {"aeroplane": 1, "cat": 8, "dog": 12}  # SPair's segmentation ids (Probe3D's CLASS_IDS)


def _refs() -> Path | None:
    """`../shared/refs` beside the checkout (for a git worktree: beside its main checkout)."""
    candidates = [REPO.parent / "shared" / "refs"]
    dot_git = REPO / ".git"
    if dot_git.is_file():  # a worktree: `gitdir: <main>/.git/worktrees/<name>`
        gitdir = Path(dot_git.read_text().split("gitdir:", 1)[1].strip())
        candidates.append(gitdir.parents[2].parent / "shared" / "refs")
    return next(
        (c for c in candidates if (c / "probe3d" / "evaluate_spair_correspondence.py").is_file()), None
    )


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random colour field (uint8 (H, W, 3)): textured, but without sharp edges."""
    coarse = Image.fromarray(rng.integers(40, 216, size=(4, 4, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((width, height), Image.BICUBIC)).copy()


def write_spair_folder(root: Path, seed: int = 0) -> Path:
    """A tiny SPair-71k folder in the published format; returns `root`."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(NUM_KPS, 3))
    pair_id, image_id = 0, 585
    for category, (num_images, viewpoints) in CATEGORIES.items():
        for folder in ("JPEGImages", "Segmentation", "ImageAnnotation"):
            (root / folder / category).mkdir(parents=True, exist_ok=True)
        images = []
        for _ in range(num_images):
            name = f"2008_{image_id:06d}"
            image_id += int(rng.integers(1, 400))
            width, height = (int(v) for v in rng.integers(40, 97, size=2))
            x1, y1 = int(rng.integers(0, width // 3)), int(rng.integers(0, height // 3))
            x2, y2 = int(rng.integers(2 * width // 3, width)), int(rng.integers(2 * height // 3, height))
            pixels = _background(rng, width, height)
            kps: dict[str, list[int] | None] = {}
            for k in range(NUM_KPS):
                if rng.random() < 0.25:
                    kps[str(k)] = None
                    continue
                x, y = int(rng.integers(x1, x2 + 1)), int(rng.integers(y1, y2 + 1))
                kps[str(k)] = [x, y]
                pixels[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4] = colours[k]
            if kps["0"] is not None:
                kps["0"] = [width - 1, kps["0"][1]]  # a keypoint on the last column
            Image.fromarray(pixels).save(root / "JPEGImages" / category / f"{name}.jpg", quality=90)
            segmentation = np.zeros((height, width), dtype=np.uint8)
            segmentation[y1:y2, x1:x2] = CLASS_IDS[category]
            Image.fromarray(segmentation).save(root / "Segmentation" / category / f"{name}.png")
            annotation = {
                "filename": f"{name}.jpg",
                "src_database": "generated",
                "annotator": "test",
                "image_width": width,
                "image_height": height,
                "image_depth": 3,
                "category": category,
                "pose": "Unspecified",
                "truncated": 0,
                "occluded": 0,
                "difficult": 0,
                "bndbox": [x1, y1, x2, y2],
                "kps": kps,
                "azimuth_id": 0,
            }
            (root / "ImageAnnotation" / category / f"{name}.json").write_text(json.dumps(annotation))
            images.append((name, (width, height), [x1, y1, x2, y2], kps))
        for i, (src, src_size, src_box, src_kps) in enumerate(images):
            for trg, trg_size, trg_box, trg_kps in images[i + 1 :]:
                pair_id += 1
                both = [
                    k for k in map(str, range(NUM_KPS)) if src_kps[k] is not None and trg_kps[k] is not None
                ]
                filename = f"{pair_id:06d}-{src}-{trg}:{category}"
                pair = {
                    "pair_id": pair_id,
                    "filename": filename,
                    "src_imname": f"{src}.jpg",
                    "trg_imname": f"{trg}.jpg",
                    "src_imsize": [*src_size, 3],
                    "trg_imsize": [*trg_size, 3],
                    "src_bndbox": src_box,
                    "trg_bndbox": trg_box,
                    "category": category,
                    "src_pose": "Unspecified",
                    "trg_pose": "Unspecified",
                    "src_kps": [src_kps[k] for k in both],
                    "trg_kps": [trg_kps[k] for k in both],
                    "kps_ids": both,
                    "viewpoint_variation": int(rng.choice(viewpoints)),
                    "scale_variation": int(rng.integers(0, 3)),
                    "truncation": 0,
                    "occlusion": 0,
                    "mirror": 0,
                }
                split = "trn" if pair_id == 2 else "test"  # one training pair: the test split leaves it out
                (root / "PairAnnotation" / split).mkdir(parents=True, exist_ok=True)
                (root / "PairAnnotation" / split / f"{filename}.json").write_text(json.dumps(pair))
    (root / "PairAnnotation" / "val").mkdir(parents=True, exist_ok=True)
    return root


def feature_fn(images: torch.Tensor) -> torch.Tensor:
    """Patch features of whole-patch images: mean colour (the keypoint markers) and a fixed random patch embedding."""
    weight = torch.randn(13, 3, PATCH, PATCH, generator=torch.Generator().manual_seed(0)) / PATCH
    colour = F.avg_pool2d(images, PATCH)
    return torch.cat([4 * colour, torch.tanh(F.conv2d(images, weight, stride=PATCH))], dim=1)


class _Logger:
    """loguru's `logger` for Probe3D's `main`: keeps the messages."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def info(self, message: str) -> None:
        self.messages.append(message)


@pytest.fixture
def probe3d(monkeypatch, tmp_path):
    """Probe3D's evaluation module, imported from the reference snapshot and CPU-patched (undone after)."""
    refs = _refs()
    if refs is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "../shared/refs/probe3d is missing: CI must run the side-by-side test against Probe3D"
            )
        pytest.skip("../shared/refs/probe3d (the Probe3D reference code) is not beside this checkout")
    import faiss

    logger = _Logger()
    stubs = {
        "hydra": types.SimpleNamespace(main=lambda *args, **kwargs: lambda fn: fn),
        "hydra.utils": types.SimpleNamespace(instantiate=None),
        "loguru": types.SimpleNamespace(logger=logger),
        "omegaconf": types.SimpleNamespace(DictConfig=dict),
        "faiss.contrib.torch_utils": types.ModuleType("faiss.contrib.torch_utils"),
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: None, raising=False)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    monkeypatch.syspath_prepend(str(refs / "probe3d"))
    monkeypatch.chdir(tmp_path)  # its `main` appends to ./spair_correspondence.log
    before = set(sys.modules)
    import evaluate_spair_correspondence as module

    monkeypatch.setattr(module, "logger", logger)
    # pair files in sorted order (Probe3D's glob gives the file system's order)
    spair_module = sys.modules["evals.datasets.spair"]
    monkeypatch.setattr(
        spair_module, "glob", types.SimpleNamespace(glob=lambda path: sorted(glob.glob(path)))
    )
    yield module, logger
    for name in set(sys.modules) - before:  # Probe3D's `evals` package must not shadow anything later
        del sys.modules[name]


class _Probe3DModel:
    """What Probe3D's `main` instantiates: a dense backbone with its ViT wrappers' centre padding."""

    checkpoint_name, patch_size, layer, output = "test_features", PATCH, -1, "dense"

    def __init__(self, center_padding) -> None:
        self.center_padding = center_padding

    def to(self, device: str) -> _Probe3DModel:
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return feature_fn(self.center_padding(images, PATCH))


def _center_padding(monkeypatch):
    """Probe3D's `center_padding` (its model utils import a transformers function only other models use)."""
    stub = types.ModuleType("transformers.models.vit_mae.modeling_vit_mae")
    stub.get_2d_sincos_pos_embed_from_grid = None
    for name in ("transformers", "transformers.models", "transformers.models.vit_mae"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, stub.__name__, stub)
    from evals.models.utils import center_padding

    return center_padding


@pytest.mark.parametrize("image_size", [96, 100])  # 100: not whole patches, both pad to 104
def test_recall_equals_probe3d(probe3d, monkeypatch, tmp_path, image_size):
    module, logger = probe3d
    root = write_spair_folder(tmp_path / "SPair-71k")
    center_padding = _center_padding(monkeypatch)

    # Probe3D: its `main` over all 18 classes x 4 buckets, reading our folder; every dataset it builds and
    # every recall its `evaluate_dataset` returns is recorded
    drawn: dict[tuple[str, str], list[str]] = {}
    recalls: dict[tuple[str, str], float] = {}
    original_dataset, original_evaluate = module.SPairDataset, module.evaluate_dataset

    def dataset(_root, split, **kwargs):
        made = original_dataset(str(root), split, **kwargs)
        bucket = "all" if kwargs["vp_diff"] is None else f"vp{kwargs['vp_diff']}"
        made.key = (kwargs["class_name"], bucket)
        drawn[made.key] = [instance["filename"] for instance in made.instances]
        return made

    def evaluate(model, data, thresh, verbose=False):
        recall, confusion = original_evaluate(model, data, thresh, verbose)
        recalls[data.key] = recall
        return recall, confusion

    monkeypatch.setattr(module, "SPairDataset", dataset)
    monkeypatch.setattr(module, "evaluate_dataset", evaluate)
    monkeypatch.setattr(module, "instantiate", lambda *args, **kwargs: _Probe3DModel(center_padding))
    config = types.SimpleNamespace(
        backbone=None, multilayer=False, eval_class="all", split="test", use_bbox=False,
        image_size=image_size, image_mean="imagenet", num_instances=CAP,
    )  # fmt: skip
    module.main(config)
    published = {}  # bucket -> the mean over classes that Probe3D logs (2 decimals)
    for message in logger.messages:
        found = re.match(r"Recall@0.1\s+view diff=\s*(\S+) \|\s+(\S+)", message)
        if found:
            published["all" if found[1] == "all" else f"vp{found[1]}"] = float(found[2])

    # neco on the same folder and features, one pair per forward like Probe3D
    pairs = build_spair(root, "test")
    settings = CorrespondenceSettings(resize=image_size, bucket_pairs=CAP, alphas=(0.1,))
    out = run_protocol(
        "correspondence", feature_fn, PATCH, pairs, None, settings, batch_size=1, num_figures=0
    )
    metrics = out.result["metrics"]

    # the same pairs drawn, in the same order
    sample = probe3d_sample(
        [(p["category"], p["variations"]["viewpoint_variation"]) for p in pairs.pairs], CAP
    )
    for category, buckets in sample.items():
        for bucket, members in buckets.items():
            assert [pairs.pairs[i]["name"] for i in members] == drawn[(category, bucket)], (category, bucket)
    assert all(not drawn[key] for key in drawn if key[0] not in CATEGORIES)  # 15 classes without pairs

    def annotated(category: str, imname: str) -> int:
        kps = json.loads((root / "ImageAnnotation" / category / imname.replace(".jpg", ".json")).read_text())[
            "kps"
        ]
        return sum(v is not None for v in kps.values())

    # keypoints annotated in one image only exist (both codes must leave them out)
    assert any(annotated(p["category"], p["src_imname"]) > len(p["kps_ids"]) for p in pairs.pairs)
    assert len(pairs) == sum(n * (n - 1) // 2 for n, _ in CATEGORIES.values()) - 1  # the trn pair left out
    assert out.result["settings"]["backbone_input_size"] == image_size + (-image_size % PATCH)

    # the same recall in every class and bucket (<= 3 pairs x 6 keypoints: one keypoint moves it by >= 5.5),
    # N/A alike
    assert set(recalls) == {
        (c, b) for c in CATEGORIES for b in PROBE3D_BUCKETS if metrics["per_category"][c][b]["num_pairs"]
    }
    for (category, bucket), recall in recalls.items():
        assert metrics["per_category"][category][bucket]["recall@0.1"] == pytest.approx(recall, abs=1e-4)
    assert "recall@0.1" not in metrics["per_category"]["cat"]["vp2"]  # no cat pair has a large change
    for bucket in PROBE3D_BUCKETS:
        assert round(metrics[f"recall@0.1_{bucket}"], 2) == pytest.approx(published[bucket], abs=1e-9)
    values = [recalls[key] for key in recalls]
    assert min(values) < 100.0 and max(values) > 0.0 and len(set(values)) > 3  # thresholds at work


def test_padding_equals_probe3d_center_padding(probe3d, monkeypatch):
    # square inputs, the protocol's (Probe3D pads a whole extra patch along a side that is already whole
    # when the other is not; a square never has one without the other)
    center_padding = _center_padding(monkeypatch)
    images = torch.randn(2, 3, 50, 50)
    for patch in (7, 8, 14, 16, 25):
        torch.testing.assert_close(
            pad_to_patches(images, patch), center_padding(images, patch), rtol=0, atol=0
        )
