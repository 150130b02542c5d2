"""Pictures the app shows: objects outlined, masks over images, and masks to and from the brush editor.

Everything returns PIL images; the tabs send them to the browser as PNG (lossless), so a mask shown
is the mask stored, pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REF_COLOUR = (0, 200, 255)  # objects with referring expressions
OTHER_COLOUR = (150, 150, 150)  # objects without (cannot be a source)
SUGGESTED_COLOUR = (255, 210, 0)  # the ref the queue suggests
PICKED_COLOUR = (255, 0, 255)  # the object picked as the source
REGION_COLOUR = (0, 70, 255)  # the region to edit (blue: RefShapes objects are often green)
EDIT_MASK_COLOUR = (255, 60, 0)  # M_e


@dataclass(frozen=True)
class ObjectMask:
    ann_id: int
    mask: np.ndarray  # (H, W) uint8 0/1
    ref_id: int | None  # None: an object without a referring expression


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The inside pixels of `mask` within `width` pixels of its border (bool)."""
    m = mask.astype(bool)
    edge = np.zeros_like(m)
    cur = m
    for _ in range(max(1, width)):
        pad = np.pad(cur, 1)
        inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
        edge |= cur & ~inner
        cur = cur & inner
    return edge


def outline_objects(image: Any, objects: Sequence[ObjectMask], *, suggested: int | None = None,
                    picked: int | None = None, region: np.ndarray | None = None, outlines: bool = True):
    """`image` with every object's outline drawn (refs in light blue, others grey), the suggested
    ref in yellow, the picked object outlined thicker in magenta and the edit region, when given,
    outlined blue. Only outlines are drawn: the inside of every object keeps its true colours, so
    colour expressions ("the red ball") can be checked. `outlines=False` gives the image as it is."""
    from PIL import Image

    out = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if not outlines:
        return Image.fromarray(out)
    width = line_width(out.shape[:2])
    for obj in objects:
        if obj.ann_id == picked:
            continue
        colour = SUGGESTED_COLOUR if (suggested is not None and obj.ref_id == suggested) else (
            REF_COLOUR if obj.ref_id is not None else OTHER_COLOUR)
        out[outline(obj.mask, width)] = colour
    if region is not None and region.shape == out.shape[:2]:
        out[outline(region, width)] = REGION_COLOUR
    for obj in objects:
        if obj.ann_id == picked:
            out[outline(obj.mask, width + 1)] = PICKED_COLOUR
    return Image.fromarray(out)


def line_width(shape: tuple[int, ...]) -> int:
    """Outline width in pixels: one per 320 pixels of the longer side, at least one."""
    return max(1, round(max(shape[:2]) / 320))


def outlined(image: Any, mask: np.ndarray | None, colour: tuple[int, int, int]):
    """`image` with only the border of `mask` drawn in `colour` (the inside keeps its colours)."""
    from PIL import Image

    out = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if mask is not None and mask.shape == out.shape[:2]:
        out[outline(mask, line_width(out.shape) + 1)] = colour
    return Image.fromarray(out)


# What each outline colour means, for the legend beside the pictures.
LEGEND: tuple[tuple[tuple[int, int, int], str], ...] = (
    (PICKED_COLOUR, "picked source object (M)"),
    (SUGGESTED_COLOUR, "object the queue suggests"),
    (REF_COLOUR, "object with expressions (can be picked)"),
    (OTHER_COLOUR, "object without expressions"),
    (REGION_COLOUR, "region to edit, when not the object"),
    (EDIT_MASK_COLOUR, "edited area (M_e) on the result"),
)


def legend_html() -> str:
    """The legend as small coloured swatches with their meaning (static HTML)."""
    items = "".join(
        f'<span class="legend-item"><span class="legend-swatch" style="border-color: rgb{colour}"></span>{text}</span>'
        for colour, text in LEGEND)
    return f'<div class="outline-legend">{items}</div>'


def overlay(image: Any, mask: np.ndarray | None, colour: tuple[int, int, int], alpha: float = 0.35):
    """`image` with `mask` tinted and outlined (the image itself when there is no mask)."""
    from refcoco_edit.imaging.viz import overlay_mask

    if mask is None:
        return image.convert("RGB")
    return overlay_mask(image, mask, colour=colour, alpha=alpha)


def mask_image(mask: np.ndarray | None, size: tuple[int, int] | None = None):
    """A binary mask as a black-and-white "L" image (255 inside), or a black image of `size`."""
    from PIL import Image

    if mask is None:
        return None if size is None else Image.new("L", size, 0)
    return Image.fromarray(np.where(mask.astype(bool), 255, 0).astype(np.uint8), mode="L")


def editor_value(background: Any, mask: np.ndarray | None, colour: tuple[int, int, int]) -> dict:
    """An ImageEditor value: the image with `mask` tinted as the background, no layers.

    The mask is drawn into the background rather than given as a paint layer because Gradio's
    editor does not show layers it is sent; brush strokes then say what to add or remove
    (`apply_strokes`)."""
    return {"background": overlay(background, mask, colour, alpha=0.5), "layers": [], "composite": None}


STROKE_MODES = ("replace", "box", "add", "remove")


def apply_strokes(mask: np.ndarray | None, strokes: np.ndarray, mode: str) -> np.ndarray:
    """The mask after brush strokes: they become it ("replace"), their bounding box does ("box": a
    stroke from one corner to the other draws a box), they join it ("add") or are cut from it ("remove")."""
    strokes = strokes.astype(bool)
    base = np.zeros_like(strokes) if mask is None else mask.astype(bool)
    if mode == "replace":
        out = strokes
    elif mode == "box":
        out = box_mask(strokes).astype(bool)
    elif mode == "add":
        out = base | strokes
    elif mode == "remove":
        out = base & ~strokes
    else:
        raise ValueError(f"unknown stroke mode {mode!r}")
    return out.astype(np.uint8)


def display_factor(size: tuple[int, int], box: tuple[int, int] = (640, 480)) -> int:
    """How many times a small picture is enlarged (whole pixels) to fill about `box` on screen."""
    w, h = size
    return max(1, min(box[0] // max(w, 1), box[1] // max(h, 1)))


def enlarge(image: Any, factor: int):
    """`image` with every pixel repeated `factor` times each way (no new colours)."""
    from PIL import Image

    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def mask_from_editor(value: Any, size: tuple[int, int]) -> np.ndarray | None:
    """The painted area of an ImageEditor value: pixels whose alpha is non-zero in any layer, as a
    (H, W) 0/1 mask at `size` (width, height); None when the value has no layers."""
    from PIL import Image

    if not isinstance(value, dict):
        return None
    layers = [lay for lay in (value.get("layers") or []) if lay is not None]
    if not layers:
        return None
    w, h = size
    out = np.zeros((h, w), bool)
    for lay in layers:
        arr = np.asarray(lay)
        if arr.ndim == 3 and arr.shape[2] == 4:
            painted = arr[:, :, 3] > 0
        elif arr.ndim == 3:
            painted = arr.max(axis=2) > 0
        else:
            painted = arr > 0
        if painted.shape != (h, w):
            im = Image.fromarray(painted.astype(np.uint8) * 255, mode="L").resize((w, h), Image.Resampling.NEAREST)
            painted = np.asarray(im) > 127
        out |= painted
    return out.astype(np.uint8)


def box_mask(mask: np.ndarray) -> np.ndarray:
    """The bounding box of `mask`, filled."""
    out = np.zeros_like(mask, dtype=np.uint8)
    ys, xs = np.nonzero(mask)
    if len(ys):
        out[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1] = 1
    return out


def object_at(objects: Sequence[ObjectMask], x: int, y: int) -> ObjectMask | None:
    """The smallest object whose mask holds pixel (x, y): the one a click on overlapping objects means."""
    hits = [o for o in objects if 0 <= y < o.mask.shape[0] and 0 <= x < o.mask.shape[1] and o.mask[y, x]]
    if not hits:
        return None
    return min(hits, key=lambda o: int(o.mask.sum()))


def highlight(prompt: str, referring_spans: Sequence[Sequence[int]], edit_spans: Sequence[Sequence[int]]
              ) -> list[tuple[str, str | None]]:
    """A prompt cut into (text, label) pieces for gr.HighlightedText: "P_r", "P_e" or None (glue)."""
    marks = sorted([(int(s), int(e), "P_r") for s, e in referring_spans]
                   + [(int(s), int(e), "P_e") for s, e in edit_spans])
    out: list[tuple[str, str | None]] = []
    pos = 0
    for s, e, label in marks:
        if s > pos:
            out.append((prompt[pos:s], None))
        out.append((prompt[s:e], label))
        pos = max(pos, e)
    if pos < len(prompt):
        out.append((prompt[pos:], None))
    return out
