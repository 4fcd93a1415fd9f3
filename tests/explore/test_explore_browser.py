"""The explorer page in a real headless Chromium (Debian's package, driven by Playwright), from file:// offline.

The marked nearest patches must equal `neco.explore.page.nearest_patches` on the same reduced, quantised
features. Without Chromium the tests are skipped locally, but fail under CI (CI=true), where `.ci/run`
installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from neco.explore.page import (
    ExploreBackbone,
    nearest_patches,
    page_vectors,
    patch_labels,
    reduce_features,
    retrieval_precision,
    write_explore_html,
)

CHROMIUM = os.environ.get("NECO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SIZE, PATCH, K, DIMS = 64, 8, 6, 32
GRID = SIZE // PATCH


def _browser_or_skip():
    missing = []
    if not Path(CHROMIUM).is_file():
        missing.append(f"Chromium ({CHROMIUM}; apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("playwright (pip install playwright)")
    if missing:
        message = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must run them (.ci/run installs Chromium)")
        pytest.skip(message)
    return sync_playwright


@pytest.fixture(scope="module")
def scene_page(tmp_path_factory):
    """A compare page of generated scenes (with masks) and the features it was written from."""
    from neco.backbones import create
    from neco.data.synthetic import generate_scenes
    from neco.evaluation.features import extract_features

    images, labels = generate_scenes(5, size=SIZE, seed=0, split="val")
    torch.manual_seed(0)
    models = {"scenes-start": create("vit_tiny_scenes", pretrained=True), "random": create("vit_tiny")}
    features = {
        name: extract_features(model, images, batch_size=16, progress=False) for name, model in models.items()
    }
    path = tmp_path_factory.mktemp("explore") / "page.html"
    write_explore_html(
        path,
        images,
        [ExploreBackbone(name, f) for name, f in features.items()],
        patch_size=PATCH,
        k=K,
        dims=DIMS,
        image_names=[f"scene {i}" for i in range(len(images))],
        masks=labels.astype(np.int64),
    )
    vectors = [page_vectors(reduce_features(f, DIMS)) for f in features.values()]
    return path, vectors, patch_labels(labels.astype(np.int64), PATCH), list(features)


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


class _Page:
    """A page opened from file:// with every non-file request aborted and recorded, console errors collected."""

    def __init__(self, browser, path: Path, **context_options):
        self.context = browser.new_context(viewport={"width": 1200, "height": 900}, **context_options)
        self.context.set_offline(True)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("body[data-ready='1']")

    def _route(self, route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()

    def click_patch(self, image: int, backbone: int, row: int, col: int, tap: bool = False) -> None:
        tile = self.page.locator(f".tile[data-image='{image}'][data-backbone='{backbone}']")
        tile.scroll_into_view_if_needed()
        box = tile.bounding_box()
        position = {"x": (col + 0.5) * box["width"] / GRID, "y": (row + 0.5) * box["height"] / GRID}
        (tile.tap if tap else tile.click)(position=position)
        self.settle()

    def settle(self) -> None:
        # Rendering waits for the next animation frame; two frames later it is done.
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def neighbours(self, backbone: int) -> list[int]:
        items = self.page.locator(f"#neighbours-{backbone} li")
        cells = items.evaluate_all("els => els.map(e => [e.dataset.image, e.dataset.row, e.dataset.col])")
        return [int(i) * GRID * GRID + int(r) * GRID + int(c) for i, r, c in cells]

    def marked(self, backbone: int) -> list[int]:
        """Patches outlined as neighbours in the tiles of `backbone`, as global indices, by rank."""
        rects = self.page.locator(f".tile[data-backbone='{backbone}'] rect.neighbour")
        found = rects.evaluate_all(
            "els => els.map(e => [e.closest('.tile').dataset.image, e.getAttribute('y'), e.getAttribute('x'),"
            " e.dataset.rank])"
        )
        found.sort(key=lambda item: int(item[3]))
        return [int(i) * GRID * GRID + int(r) * GRID + int(c) for i, r, c, _ in found]

    def close(self) -> None:
        self.context.close()


def _expected(vectors, image: int, row: int, col: int, k: int = K) -> tuple[int, list[int]]:
    query = image * GRID * GRID + row * GRID + col
    return query, nearest_patches(vectors, query, k, GRID * GRID)[0].tolist()


def test_click_marks_the_python_nearest_patches_in_both_views(browser, scene_page):
    path, vectors, labels, names = scene_page
    view = _Page(browser, path)
    try:
        image, row, col = 2, 3, 5
        view.click_patch(image, 1, row, col)  # a click in either backbone's tile picks for both
        query, _ = _expected(vectors[0], image, row, col)
        for backbone in (0, 1):
            _, expected = _expected(vectors[backbone], image, row, col)
            assert view.neighbours(backbone) == expected
            assert view.marked(backbone) == expected
            # The query patch is outlined in its own image for both backbones.
            tile = view.page.locator(f".tile[data-image='{image}'][data-backbone='{backbone}']")
            assert tile.locator("rect.query").evaluate("e => [e.getAttribute('y'), e.getAttribute('x')]") == [
                str(row),
                str(col),
            ]
            # Precision shown per backbone equals the Python computation for the same neighbours.
            precision = retrieval_precision(labels, query, expected)
            status = view.page.locator(f"#status .backbone[data-backbone='{backbone}']").inner_text()
            assert names[backbone] in status
            assert (f"{precision:.2f}" if precision is not None else "precision n/a") in status
            kinds = view.page.locator(f".tile[data-backbone='{backbone}'] rect.neighbour").evaluate_all(
                "els => els.map(e => [e.closest('.tile').dataset.image, e.getAttribute('y'),"
                " e.getAttribute('x'), e.classList.contains('match')])"
            )
            for im, r, c, match in kinds:
                index = int(im) * GRID * GRID + int(r) * GRID + int(c)
                assert match == (labels.reshape(-1)[index] == labels.reshape(-1)[query])
        # Both backbones are on the page: one tile each per image, both named in the header.
        assert view.page.locator(".tile[data-backbone='0']").count() == 5
        assert view.page.locator(".tile[data-backbone='1']").count() == 5
        meta = view.page.locator("#meta").inner_text()
        assert all(name in meta for name in names) and f"k = {K}" in meta and "input 64x64 px" in meta
        assert view.requests == [] and view.errors == []
    finally:
        view.close()


def test_keyboard_moves_the_pick_and_changes_k_and_view(browser, scene_page):
    path, vectors, _, _ = scene_page
    view = _Page(browser, path)
    try:
        view.click_patch(0, 0, 4, 4)
        view.page.keyboard.press("ArrowRight")
        view.page.keyboard.press("ArrowUp")
        view.page.keyboard.press("]")
        view.page.keyboard.press("+")
        view.settle()
        assert view.neighbours(0) == _expected(vectors[0], 1, 3, 5, k=K + 1)[1]
        pixels_before = view.page.locator(".tile[data-image='1'][data-backbone='0'] canvas").evaluate(
            "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data.slice(0, 64))"
        )
        view.page.keyboard.press("p")
        view.settle()
        assert view.page.locator("input[name='view'][value='pca']").is_checked()
        pixels_after = view.page.locator(".tile[data-image='1'][data-backbone='0'] canvas").evaluate(
            "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data.slice(0, 64))"
        )
        assert pixels_after != pixels_before  # the PCA colour map replaced the heat map
        assert view.requests == [] and view.errors == []
    finally:
        view.close()


def test_touch_tap_picks_a_patch(browser, scene_page):
    path, vectors, _, _ = scene_page
    view = _Page(browser, path, has_touch=True, is_mobile=True)
    try:
        view.click_patch(4, 0, 1, 6, tap=True)
        assert view.neighbours(0) == _expected(vectors[0], 4, 1, 6)[1]
        assert view.requests == [] and view.errors == []
    finally:
        view.close()
