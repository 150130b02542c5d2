"""Referring segmenters for the two-stage `seg_inpaint` baseline: a sample -> mask of the referred object.

| name | what | reads |
|---|---|---|
| gt | the dataset's source mask M: an oracle, the best any segmenter can do | source_mask |
| refshapes | RefShapes' expression parser on the scene: exact there, refuses other data | referring_text, image_id |

A segmenter is a class with `name`, `reads`, `availability()`, `setup()` and `segment(sample) -> (H, W)
uint8 0/1 array` at the source's size. Others plug in by "module:Class" (`--method-option
segmenter=mypkg.seg:MySegmenter`), e.g. a wrapper around a referring-segmentation model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from refcoco_edit.errors import DataError, InputError
from refcoco_edit.registry import Registry

# Duck-typed: a plug-in segmenter need not subclass `Segmenter`.
SEGMENTERS: Registry[type[Segmenter]] = Registry("segmenter", {
    "gt": "benchmark.methods.segmenters:GroundTruthSegmenter",
    "refshapes": "benchmark.methods.segmenters:RefShapesSegmenter",
}, allow_paths=True)


class Segmenter:
    """Base class: `segment(sample)` gives the referred object's mask."""

    name: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ("source_image", "referring_text")

    def __init__(self, **options: Any) -> None:
        self.options = options

    def availability(self) -> str | None:
        return None

    def setup(self) -> None:
        """Load models or data on first use."""

    def segment(self, sample: Any) -> np.ndarray:
        raise NotImplementedError


class GroundTruthSegmenter(Segmenter):
    """The oracle: the dataset's mask of the referred object."""

    name = "gt"
    reads = ("source_mask",)

    def segment(self, sample: Any) -> np.ndarray:
        return np.asarray(sample.source_mask, dtype=np.uint8)


class RefShapesSegmenter(Segmenter):
    """P_r parsed by RefShapes' grammar and resolved against the image's objects (exact on RefShapes).

    Scenes are read from a RefShapes root (REFER layout, `refshapes/edits.json` with the objects),
    the bundled sample's by default (`refshapes_root` option otherwise). An expression outside the
    grammar, or a sample whose image is not in the root, is an `InputError`; an expression that
    matches no object gives an empty mask.
    """

    name = "refshapes"
    reads = ("referring_text", "image_id")

    def __init__(self, *, refshapes_root: str = "", **options: Any) -> None:
        super().__init__(**options)
        self.root = refshapes_root
        self.data: Any = None
        self.objects: dict[int, dict[str, dict]] = {}

    def setup(self) -> None:
        import json

        from refcoco_edit.refer.reader import RefCOCO
        from refcoco_edit.refshapes import SAMPLE_DATASET, SAMPLE_SPLIT_BY, sample_root

        root = Path(self.root).expanduser() if self.root else sample_root()
        edits = root / SAMPLE_DATASET / "edits.json"
        if not edits.is_file():
            raise DataError(f"no RefShapes scenes at {root} (no {SAMPLE_DATASET}/edits.json)")
        self.data = RefCOCO.load(root, SAMPLE_DATASET, SAMPLE_SPLIT_BY)
        for ann_id, obj in json.loads(edits.read_text(encoding="utf-8"))["objects"].items():
            self.objects.setdefault(int(obj["image_id"]), {})[ann_id] = obj

    def segment(self, sample: Any) -> np.ndarray:
        from refcoco_edit.refshapes import resolve_expression

        scene = self.objects.get(int(sample.image_id))
        if scene is None:
            raise InputError(f"sample {sample.sample_id}: image {sample.image_id} is not a RefShapes scene here")
        info = self.data.image(int(sample.image_id))
        w, h = sample.source_image.size
        if (int(info["width"]), int(info["height"])) != (w, h):
            raise InputError(f"sample {sample.sample_id}: its image is {w}x{h}, RefShapes scene "
                             f"{sample.image_id} is {info['width']}x{info['height']}")
        mask = np.zeros((h, w), np.uint8)
        for ann_id in resolve_expression(sample.referring_text, scene):
            mask |= np.asarray(self.data.ann_mask(ann_id), dtype=np.uint8)
        return mask


def segmenter_class(name: str) -> type[Segmenter]:
    """The class of a segmenter name, or of a "module:Class" path."""
    return SEGMENTERS.load(name)


def create_segmenter(name: str, *, refshapes_root: str = "") -> Segmenter:
    cls = segmenter_class(name)
    if isinstance(cls, type) and issubclass(cls, RefShapesSegmenter):
        return cls(refshapes_root=refshapes_root)
    return cls()
