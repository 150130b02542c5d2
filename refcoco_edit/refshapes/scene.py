"""Sampling one RefShapes scene: 2 to 6 flat shapes that never overlap.

Scenes draw their kinds and colours from a small per-scene palette, so most objects share a kind or
a colour with another one: that is what makes referring expressions necessary (RefCOCO images hold
several objects of the referred category).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refcoco_edit.refshapes import geometry as geo

MIN_OBJECTS = 2
MAX_OBJECTS = 6
GAP = 4.0  # pixels kept free between the discs that hold two objects
BORDER = 2.0  # pixels kept free between a disc and the image border
PLACEMENT_TRIES = 64


@dataclass
class SceneObject:
    """One shape of a scene, with the RLE of the mask its polygon rasterises to."""

    kind: str
    colour: str
    size: str  # size class: small | medium | large
    nominal_area: float  # polygon area asked for; `area` is the rasterised pixel count
    center: tuple[float, float]
    polygon: list[float] = field(default_factory=list)
    rle: dict = field(default_factory=dict)
    area: float = 0.0
    bbox: list[float] = field(default_factory=list)

    @property
    def x(self) -> float:
        return self.center[0]

    @property
    def y(self) -> float:
        return self.center[1]


def make_object(kind: str, colour: str, size: str, nominal_area: float,
                center: tuple[float, float]) -> SceneObject:
    """Build an object and rasterise it (mask, pixel area and bbox from pycocotools)."""
    obj = SceneObject(kind, colour, size, nominal_area, center)
    obj.polygon = geo.polygon(kind, center, nominal_area)
    obj.rle = geo.rasterise(obj.polygon)
    obj.area = geo.rle_area(obj.rle)
    obj.bbox = geo.rle_bbox(obj.rle)
    return obj


def _place(rng: np.random.Generator, radius: float, placed: list[tuple[float, float, float]]
           ) -> tuple[float, float] | None:
    """Rejection sampling of a centre whose disc keeps clear of the border and of placed discs."""
    lo_x, hi_x = radius + BORDER, geo.WIDTH - radius - BORDER
    lo_y, hi_y = radius + BORDER, geo.HEIGHT - radius - BORDER
    xs = rng.uniform(lo_x, hi_x, PLACEMENT_TRIES)
    ys = rng.uniform(lo_y, hi_y, PLACEMENT_TRIES)
    ok = np.ones(PLACEMENT_TRIES, dtype=bool)
    for px, py, pr in placed:
        ok &= np.hypot(xs - px, ys - py) >= radius + pr + GAP
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return None
    return round(float(xs[hits[0]]), 2), round(float(ys[hits[0]]), 2)


def _has_pair(kinds: list[str], colours: list[str]) -> bool:
    return len(set(kinds)) < len(kinds) or len(set(colours)) < len(colours)


def sample_scene(rng: np.random.Generator, num_objects: int) -> list[SceneObject]:
    """Sample sizes and places first (largest first, shrinking what does not fit), then kinds and
    colours, making sure at least two objects share a kind or a colour."""
    sizes = [str(s) for s in rng.choice(geo.SIZE_LABELS, size=num_objects)]
    sizes.sort(key=geo.SIZE_LABELS.index, reverse=True)
    placed: list[tuple[float, float, float]] = []
    layout: list[tuple[str, float, tuple[float, float]]] = []
    for size in sizes:
        level = geo.SIZE_LABELS.index(size)
        while level >= 0:
            label = geo.SIZE_LABELS[level]
            lo, hi = geo.SIZE_AREAS[label]
            area = round(float(rng.uniform(lo, hi)), 1)
            radius = geo.reserve_radius(area)
            center = _place(rng, radius, placed)
            if center is not None:
                placed.append((center[0], center[1], radius))
                layout.append((label, area, center))
                break
            level -= 1
    kind_pool = [str(k) for k in rng.choice(geo.KINDS, size=int(rng.integers(1, 4)), replace=False)]
    colour_pool = [str(c) for c in rng.choice(list(geo.COLOURS), size=int(rng.integers(2, 4)),
                                               replace=False)]
    kinds = [str(k) for k in rng.choice(kind_pool, size=len(layout))]
    colours = [str(c) for c in rng.choice(colour_pool, size=len(layout))]
    if len(layout) >= 2 and not _has_pair(kinds, colours):
        kinds[1] = kinds[0]
    return [make_object(k, c, label, area, center)
            for k, c, (label, area, center) in zip(kinds, colours, layout)]
