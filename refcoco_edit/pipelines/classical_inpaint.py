"""`classical_inpaint`: remove the object with OpenCV inpainting; no weights, no randomness.

The object's mask is dilated by `dilate` pixels (object outlines in COCO are rough, and a ring of the
object's own colour left around the hole would be filled back in), then filled by Telea's fast
marching method or the Navier-Stokes method (`cv2.inpaint`, radius `radius`) at the source's size.
Every pixel outside the dilated mask is copied from the source, so it equals the source's exactly.

With `num` > 1 the candidates are variants (the requested method first, then the other one, then
both again with a doubled radius, ...); the seed is only recorded (seed + i), the result does not
depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from refcoco_edit.errors import InputError
from refcoco_edit.pipelines.base import Candidate, dilate, edit_mask, prepare_inputs, seeds_for
from refcoco_edit.pipelines.capabilities import EditPipeline, EditRequest, given

NAME = "classical_inpaint"
MODEL = "opencv"
METHODS = ("telea", "ns")
DEFAULT_RADIUS = 5
DEFAULT_DILATE = 5


def inpaint_image(image: Any, hole: np.ndarray, method: str = "telea", radius: int = DEFAULT_RADIUS) -> np.ndarray:
    """(H, W, 3) uint8: `image` with the pixels of `hole` filled by OpenCV; the others unchanged."""
    import cv2

    flags = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
    src = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    filled = cv2.inpaint(src, hole.astype(np.uint8), float(radius), flags)
    return np.where(hole.astype(bool)[:, :, None], filled, src)


def variants(method: str, radius: int, num: int) -> list[tuple[str, int]]:
    other = METHODS[1 - METHODS.index(method)]
    return [((method, other)[i % 2], radius * (1 + i // 2)) for i in range(num)]


class ClassicalInpaintPipeline(EditPipeline):
    """OpenCV removal (see the module docstring)."""

    name = NAME
    label = "removal (OpenCV, no model)"
    edit_types = ("remove",)
    default_model = MODEL
    needs_weights = False

    def __init__(
        self,
        model: str | None = None,
        overrides: Mapping[str, str] | None = None,
        device: Any = None,
        dtype: Any = None,
        *,
        progress: bool = True,
    ) -> None:
        if model not in (None, MODEL):
            raise InputError(f"classical_inpaint uses no model (got --model {model}); leave it out")
        self.model = MODEL

    @classmethod
    def generate_kwargs(cls, request: EditRequest) -> dict[str, Any]:
        """The count and seed, and the OpenCV settings given; the text and sampling options do not apply."""
        return {"num": request.num, "seed": request.seed,
                **given(method=request.method, radius=request.radius, dilate_px=request.dilate_px)}

    def generate(
        self,
        image: Any,
        mask: Any,
        *,
        num: int = 1,
        seed: int = 0,
        method: str = "telea",
        radius: int = DEFAULT_RADIUS,
        dilate_px: int = DEFAULT_DILATE,
        text: str | None = None,
    ) -> list[Candidate]:
        """`num` filled images; `text` is accepted for a uniform call and ignored."""
        from PIL import Image

        method = method.lower()
        if method not in METHODS:
            raise InputError(f"unknown inpainting method {method!r}; use one of {', '.join(METHODS)}")
        if radius < 1 or dilate_px < 0:
            raise InputError(f"radius must be >= 1 and dilate >= 0, got {radius} and {dilate_px}")
        prep = prepare_inputs(image, mask, resize=False)
        hole = dilate(prep.mask, dilate_px)
        if hole.all():
            raise InputError(f"the mask dilated by {dilate_px} px covers the whole image: nothing to fill from")
        seeds = seeds_for(seed, num)
        out = []
        for i, (s, (meth, rad)) in enumerate(zip(seeds, variants(method, radius, num))):
            img = Image.fromarray(inpaint_image(prep.image, hole, meth, rad))
            params = {"pipeline": self.name, "method": meth, "radius": rad, "dilate": dilate_px,
                      "model": self.model, "source_size": list(prep.size), "seed": s, "seeds": seeds,
                      "batch_index": i}
            # every changed pixel lies in the hole: margin 0 keeps M_e inside it
            out.append(Candidate(image=img, seed=s, params=params, model=self.model,
                                 edit_mask=edit_mask(prep.image, img, hole, margin=0)))
        return out
