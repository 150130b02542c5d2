"""Pictures of results: masks drawn over images and labelled image grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def overlay_mask(image, mask: np.ndarray, colour: tuple[int, int, int] = (255, 0, 255), alpha: float = 0.35):
    """`image` with `mask` tinted and its outline drawn, so the referred object stands out."""
    from PIL import Image

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = mask.astype(bool)
    out = rgb.copy()
    out[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, np.float32)
    # outline: inside pixels with an outside 4-neighbour
    pad = np.pad(m, 1)
    edge = m & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    out[edge] = colour
    return Image.fromarray(out.round().astype(np.uint8))


def image_grid(rows: Sequence[Sequence], row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, cell: int = 160, pad: int = 4):
    """Lay out images (PIL or None for an empty cell) in rows, each scaled to fit a `cell`-pixel square.

    A row is as tall as its tallest picture (not the square), so that landscape images such as COCO's
    4:3 ones leave no empty band below them."""
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("image_grid needs at least one row")
    thumbs = []
    for row in rows:
        line = []
        for im in row:
            thumb = None
            if im is not None:
                thumb = im.convert("RGB").copy()
                thumb.thumbnail((cell, cell), Image.NEAREST)
            line.append(thumb)
        thumbs.append(line)
    heights = [max((t.height for t in line if t is not None), default=cell) for line in thumbs]
    n_cols = max(len(r) for r in rows)
    top = 14 if col_labels else 0
    left = 0
    if row_labels:
        left = 8 + 6 * max(len(s) for s in row_labels)
    grid = Image.new("RGB", (left + n_cols * (cell + pad) + pad, top + sum(heights) + pad * (len(rows) + 1)), "white")
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(col_labels or []):
        draw.text((left + pad + j * (cell + pad), 2), str(label), fill="black")
    y = top + pad
    for i, line in enumerate(thumbs):
        if row_labels:
            draw.text((4, y + heights[i] // 2 - 6), str(row_labels[i]), fill="black")
        for j, thumb in enumerate(line):
            if thumb is not None:
                grid.paste(thumb, (left + pad + j * (cell + pad), y))
        y += heights[i] + pad
    return grid
