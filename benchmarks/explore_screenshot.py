"""Screenshot of an explorer page after picking one patch (the README's docs/images/explore.png).

Example (the README's picture, from a `neco demo` output):
  python benchmarks/explore_screenshot.py demo_out/explore.html docs/images/explore.png \
      --image 8 --row 3 --col 5 --width 1440 --height 960 --tile 128
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("page", type=Path, help="an explore.html")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--image", type=int, default=0, help="image of the picked patch")
    parser.add_argument("--row", type=int, default=0)
    parser.add_argument("--col", type=int, default=0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=820)
    parser.add_argument("--tile", type=int, default=176, help="tile size in CSS pixels")
    args = parser.parse_args(argv)

    from PIL import Image
    from playwright.sync_api import sync_playwright

    args.out.parent.mkdir(parents=True, exist_ok=True)

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.page.resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']")
        page.evaluate(f"document.documentElement.style.setProperty('--tile', '{args.tile}px')")
        tile = page.locator(f".tile[data-image='{args.image}'][data-backbone='0']")
        box = tile.bounding_box()
        grid = page.evaluate("JSON.parse(document.getElementById('neco-data').textContent).grid")
        tile.click(
            position={
                "x": (args.col + 0.5) * box["width"] / grid[1],
                "y": (args.row + 0.5) * box["height"] / grid[0],
            }
        )
        page.mouse.move(0, 0)
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        shot = page.screenshot()
        browser.close()
    # A 256-colour palette keeps the README's PNG at a third of the size; the page has few colours.
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        args.out, optimize=True
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
