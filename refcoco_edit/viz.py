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
    """Lay out images (PIL or None for an empty cell) in rows, each scaled to fit a `cell`-pixel square."""
    from PIL import Image, ImageDraw

    n_cols = max(len(r) for r in rows)
    top = 14 if col_labels else 0
    left = 0
    if row_labels:
        left = 8 + 6 * max(len(s) for s in row_labels)
    grid = Image.new("RGB", (left + n_cols * (cell + pad) + pad, top + len(rows) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(col_labels or []):
        draw.text((left + pad + j * (cell + pad), 2), str(label), fill="black")
    for i, row in enumerate(rows):
        y = top + pad + i * (cell + pad)
        if row_labels:
            draw.text((4, y + cell // 2 - 6), str(row_labels[i]), fill="black")
        for j, im in enumerate(row):
            if im is None:
                continue
            thumb = im.convert("RGB").copy()
            thumb.thumbnail((cell, cell), Image.NEAREST)
            grid.paste(thumb, (left + pad + j * (cell + pad), y))
    return grid
