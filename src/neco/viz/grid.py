"""Figure canvases: equal-size tiles pasted in rows under an optional band of column titles."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

__all__ = ["TITLE_HEIGHT", "tile_grid"]

# Height in pixels of the column titles above the tiles.
TITLE_HEIGHT = 16


def tile_grid(rows: Sequence[Sequence[Image.Image]], tile: int, titles: Sequence[str] = ()) -> Image.Image:
    """One white RGB canvas: row r, column c holds `rows[r][c]` resized (nearest) to `tile` x `tile` pixels."""
    top = TITLE_HEIGHT if titles else 0
    canvas = Image.new("RGB", (max(len(r) for r in rows) * tile, top + len(rows) * tile), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((c * tile + 3, 3), title, fill=(0, 0, 0))  # PIL's built-in bitmap font: no font file
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            canvas.paste(picture.resize((tile, tile), Image.NEAREST), (c * tile, top + r * tile))
    return canvas
