"""Size and speed of the `neco explore` page: 50 images, ViT-S/14-shaped random backbones, 448 px.

Writes the page twice (one backbone, and two side by side as `--compare` does) for generated scenes
at 448 px (textured, noisy images: their JPEGs are larger than typical photos'), reports the file
size split into images and features, the time to compute features and to write the page, and, when
Chromium and Playwright are installed, the time the page takes to load and to answer a click.

Examples:
  python benchmarks/explore_size.py                                  # the documented setting
  python benchmarks/explore_size.py --images 8 --size 224 --quick    # a smoke run
  python benchmarks/explore_size.py --json benchmarks/results/explore.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, default=448, help="input size in pixels (a multiple of 14)")
    parser.add_argument("--backbone", default="dinov2_vits14", help="architecture, built with random weights")
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: library default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clicks", type=int, default=5, help="timed picks in the browser")
    parser.add_argument("--quick", action="store_true", help="skip the browser timing")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    return parser.parse_args(argv)


def _browser_timing(path: Path, clicks: int) -> dict[str, float] | None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path(chromium).is_file():
        return None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        t0 = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        load = time.perf_counter() - t0
        # One pick = similarities and top-k for every backbone + redrawing every tile, measured in the page.
        pick_ms = page.evaluate(
            """(clicks) => {
                const api = window.necoExplore, times = [];
                return new Promise((resolve) => {
                    let i = 0;
                    const next = () => {
                        if (i === clicks) { times.sort((a, b) => a - b); resolve(times[times.length >> 1]); return; }
                        const t = performance.now();
                        api.pick(i % 4, 3 + i, 5 + i, true);
                        requestAnimationFrame(() => { times.push(performance.now() - t); i++; setTimeout(next, 0); });
                    };
                    next();
                });
            }""",
            clicks,
        )
        browser.close()
    return {"load_s": load, "pick_median_ms": float(pick_ms)}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from neco.backbones import create
    from neco.data.synthetic import generate_scenes
    from neco.evaluation.features import extract_features
    from neco.explore.page import ExploreBackbone, reduce_features, write_explore_html

    t0 = time.perf_counter()
    images, labels = generate_scenes(args.images, size=args.size, seed=0, split="val")
    scene_s = time.perf_counter() - t0
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(create(args.backbone, pretrained=False).eval())
    patch = int(models[0].patch_size)
    features, feature_s = [], []
    for model in models:
        t0 = time.perf_counter()
        features.append(extract_features(model, images, batch_size=8, device=args.device, progress=False))
        feature_s.append(time.perf_counter() - t0)
    result = {
        "setting": {
            "images": args.images,
            "size": args.size,
            "backbone": f"{args.backbone} (random init)",
            "patch": patch,
            "grid": list(features[0].shape[2:]),
            "feature_dim": int(features[0].shape[1]),
            "dims": args.dims,
            "k": args.k,
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        },
        "scenes_s": scene_s,
        "features_s_per_backbone": feature_s,
    }
    with tempfile.TemporaryDirectory() as tmp:
        pages = {}
        for label, count in (("one_backbone", 1), ("compare", 2)):
            path = Path(tmp) / f"{label}.html"
            t0 = time.perf_counter()
            columns = [ExploreBackbone(f"random {i}", features[i]) for i in range(count)]
            write_explore_html(
                path,
                images,
                columns,
                patch_size=patch,
                k=args.k,
                dims=args.dims,
                masks=labels.astype("int64"),
            )
            pages[label] = {"write_s": time.perf_counter() - t0, "mb": path.stat().st_size / 2**20}
            print(
                f"{label}: {pages[label]['mb']:.2f} MB, written in {pages[label]['write_s']:.1f} s",
                flush=True,
            )
            if label == "compare" and not args.quick:
                timing = _browser_timing(path, args.clicks)
                if timing is None:
                    print("browser timing skipped: Chromium or playwright missing")
                else:
                    pages[label].update(timing)
        reduced = reduce_features(features[0], args.dims)
        result["pages"] = pages
        result["features_mb_per_backbone"] = reduced.codes.nbytes * 4 / 3 / 2**20  # base64
        result["energy_kept"] = reduced.energy
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
