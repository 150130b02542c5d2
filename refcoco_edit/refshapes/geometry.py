"""Shapes, colours and pixels of RefShapes.

Every object is a polygon rasterised by pycocotools itself, so the pixels painted into an image are
exactly the mask that its annotation decodes to: no antialiasing, no second rasteriser that could
disagree by one pixel at an edge.
"""

from __future__ import annotations

import math

import numpy as np
from pycocotools import mask as mask_utils

# Image size of every RefShapes image: small enough for a 2 MB sample, both sides multiples of 8
# (diffusion models downsample by 8).
WIDTH = 256
HEIGHT = 192

# Kinds are the COCO categories, ids 1..K in this order.
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond")
PLURALS: dict[str, str] = {kind: kind + "s" for kind in KINDS}

# Saturated, well separated colours; backgrounds are near-grey, so no object colour ever equals a
# background tone (a removal therefore changes every pixel of the object).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "green": (34, 160, 60),
    "blue": (40, 90, 215),
    "yellow": (240, 205, 20),
    "purple": (135, 55, 175),
    "orange": (245, 125, 15),
}

# Size classes by target pixel area; neighbouring classes differ by at least a factor 1.5, so the
# words "small"/"medium"/"large" stay visually true across kinds.
SIZE_AREAS: dict[str, tuple[float, float]] = {
    "small": (200.0, 320.0),
    "medium": (480.0, 720.0),
    "large": (1080.0, 1500.0),
}
SIZE_LABELS: tuple[str, ...] = ("small", "medium", "large")

CIRCLE_SEGMENTS = 48
STAR_INNER_RATIO = 0.45


def _regular(n: int, start_deg: float) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    outer = _regular(5, -90.0)
    inner = _regular(5, -90.0 + 36.0) * STAR_INNER_RATIO
    return np.stack([outer, inner], axis=1).reshape(10, 2)


# Unit polygons: circumradius 1, centred on the origin, image axes (y grows downwards).
UNIT_POLYGONS: dict[str, np.ndarray] = {
    "circle": _regular(CIRCLE_SEGMENTS, 0.0),
    "square": _regular(4, 45.0),
    "triangle": _regular(3, -90.0),
    "star": _star(),
    "hexagon": _regular(6, 0.0),
    "diamond": _regular(4, 0.0),
}


def _shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


UNIT_AREAS: dict[str, float] = {kind: _shoelace(poly) for kind, poly in UNIT_POLYGONS.items()}
# The kind that needs the largest circumradius for a given area; placing objects with this radius
# means any replacement kind of the same area fits in the same free disc.
_MIN_UNIT_AREA = min(UNIT_AREAS.values())


def circumradius(kind: str, area: float) -> float:
    """Circumradius that gives `kind` the polygon area `area`."""
    return math.sqrt(area / UNIT_AREAS[kind])


def reserve_radius(area: float) -> float:
    """Radius of the disc that holds an object of this area whatever its kind."""
    return math.sqrt(area / _MIN_UNIT_AREA)


def polygon(kind: str, center: tuple[float, float], area: float) -> list[float]:
    """COCO polygon [x1, y1, x2, y2, ...] of a shape, rounded to 2 decimals as COCO stores them."""
    pts = UNIT_POLYGONS[kind] * circumradius(kind, area) + np.asarray(center)
    return [round(float(v), 2) for v in pts.reshape(-1)]


def rasterise(poly: list[float], height: int = HEIGHT, width: int = WIDTH) -> dict:
    """Compressed RLE (counts as bytes) of a polygon, as pycocotools decodes the polygon."""
    return mask_utils.merge(mask_utils.frPyObjects([poly], height, width))


def rle_to_json(rle: dict) -> dict:
    """COCO compressed RLE with str counts, the form instances.json stores."""
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def rle_area(rle: dict) -> float:
    """Pixel count of the mask, as pycocotools decodes it (COCO stores areas as floats)."""
    return float(mask_utils.area(rle))


def rle_bbox(rle: dict) -> list[float]:
    """[x, y, w, h] of the mask, as pycocotools computes it."""
    return [float(v) for v in mask_utils.toBbox(rle)]


def union(rles: list[dict]) -> dict:
    return mask_utils.merge(rles, intersect=False)


def decode(rle: dict) -> np.ndarray:
    """Boolean (H, W) mask of an RLE."""
    return mask_utils.decode(rle).astype(bool)


def draw_background(rng: np.random.Generator) -> dict:
    """Parameters of a low-contrast two-tone pattern (stripes, checker or diagonal), near grey.

    Drawn for every image, painted only when images are written, so the random stream (and with
    it every annotation) is the same with and without images.
    """
    pattern = str(rng.choice(["hstripes", "vstripes", "checker", "diagonal"]))
    period = int(rng.choice([8, 12, 16]))
    grey = int(rng.integers(150, 216))
    tint = rng.integers(-8, 9, size=3)
    delta = int(rng.integers(6, 15))
    tone_a = [int(v) for v in np.clip(grey + tint, 0, 255)]
    tone_b = [int(v) for v in np.clip(grey + tint + delta, 0, 255)]
    return {"pattern": pattern, "period": period, "tones": [tone_a, tone_b]}


def render_background(params: dict, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W, 3) uint8 image of a background; periodic and flat, so PNG compresses it well."""
    yy, xx = np.mgrid[0:height, 0:width]
    half = params["period"] // 2
    pattern = params["pattern"]
    if pattern == "hstripes":
        sel = (yy // half) % 2 == 1
    elif pattern == "vstripes":
        sel = (xx // half) % 2 == 1
    elif pattern == "checker":
        sel = ((yy // half) + (xx // half)) % 2 == 1
    else:
        sel = ((xx + yy) // half) % 2 == 1
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[...] = params["tones"][0]
    img[sel] = params["tones"][1]
    return img
