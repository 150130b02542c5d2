"""`composition`: put another object into the masked region with Paint-by-Example (Yang et al., 2023).

The substitute comes as an example image: a crop of another object of the dataset (`crop_object`,
from its image and mask) or any picture a user uploads. The model is diffusers'
`PaintByExamplePipeline`, loaded through `pbe_loading.load_paint_by_example`, which works around the
saved-pipeline defect of diffusers 0.42 (see that module), with Stable Diffusion's DDIM made from the
checkpoint's scheduler (`models.components.sd_ddim_scheduler`: its settings kept, `clip_sample=False`;
DDIM's own default `clip_sample=True` washes the images out). Candidates are
batched in one call by repeating the source, mask and example once per candidate with one generator
per seed, so that candidate i gets exactly the noise and masked-image latent sample a single call with
its seed gets. Defaults: 50 steps, guidance scale 5 (the model's own default).

The result goes back to the source's size, the background outside a feathered mask is copied from the
source (`restore`, on by default) and the edit mask M_e is computed as in `base`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from refcoco_edit.errors import InputError
from refcoco_edit.pipelines.base import (
    DEFAULT_FEATHER,
    Candidate,
    as_mask,
    as_rgb,
    check_feather,
    check_steps,
    cpu_generators,
    float_images_to_pil,
    prepare_inputs,
    resize_mask_nearest,
    seeds_for,
)
from refcoco_edit.pipelines.diffusion import DiffusionEditPipeline

logger = logging.getLogger(__name__)

NAME = "composition"
DEFAULT_MODEL = "paint-by-example"
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0
CROP_PAD = 0.1  # grow an object's box by this share of its size on each side
CROP_FILL = 255  # fills the pixels of the box outside the object (Paint-by-Example's examples are on white)


def crop_object(image: Any, mask: Any, *, pad: float = CROP_PAD, fill: int | None = CROP_FILL, square: bool = True):
    """An example image from another object: its bounding box grown by `pad` (and made square, so
    that CLIP's centre crop keeps all of it), with the pixels outside the object set to `fill`
    (None keeps them)."""
    from PIL import Image

    image = as_rgb(image)
    m = as_mask(mask)
    if m.shape != (image.height, image.width):
        m = resize_mask_nearest(m, image.size)
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        raise InputError("the example object's mask is empty")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bw, bh = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = bw * (0.5 + pad), bh * (0.5 + pad)
    if square:
        half_w = half_h = max(half_w, half_h)
    box = (int(math.floor(cx - half_w)), int(math.floor(cy - half_h)),
           int(math.ceil(cx + half_w)), int(math.ceil(cy + half_h)))
    arr = np.asarray(image).copy()
    if fill is not None:
        arr[m == 0] = fill
    bg = (fill, fill, fill) if fill is not None else (255, 255, 255)
    canvas = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), bg)
    src = Image.fromarray(arr)
    # paste the part of the box that lies inside the image; the rest stays `fill`
    inner = (max(box[0], 0), max(box[1], 0), min(box[2], image.width), min(box[3], image.height))
    canvas.paste(src.crop(inner), (inner[0] - box[0], inner[1] - box[1]))
    return canvas


class CompositionPipeline(DiffusionEditPipeline):
    """Paint-by-Example composition (see the module docstring)."""

    name = NAME
    label = "composition (Paint-by-Example)"
    edit_types = ("replace",)
    default_model = DEFAULT_MODEL
    needs_example = True

    def load(self, name: str, overrides: Mapping[str, str]) -> Any:
        from refcoco_edit.models.components import sd_ddim_scheduler
        from refcoco_edit.models.pbe_loading import load_paint_by_example
        from refcoco_edit.models.resolver import load_pretrained

        def loader(src: str):
            return load_paint_by_example(src, safety_checker=None)

        pipe = load_pretrained(name, loader, overrides)
        pipe.scheduler = sd_ddim_scheduler(pipe.scheduler)
        return pipe

    def generate(
        self,
        image: Any,
        mask: Any,
        *,
        example: Any,
        num: int = 1,
        seed: int = 0,
        steps: int = DEFAULT_STEPS,
        size: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE,
        restore: bool = True,
        feather: int = DEFAULT_FEATHER,
        example_source: str | None = None,
    ) -> list[Candidate]:
        """`num` candidates (seeds seed, seed+1, ...) painting `example` (a PIL image or uint8 array)
        into the masked region. `example_source` (a path or "ref 12") is recorded in the parameters."""
        from PIL import Image

        if example is None:
            raise InputError("composition needs an example image of the substitute object")
        check_feather(feather)
        example = as_rgb(example)
        steps = check_steps(steps)
        prep = prepare_inputs(image, mask, size=size)
        seeds = seeds_for(seed, num)
        mask_image = Image.fromarray(prep.work_mask * np.uint8(255))
        k = len(seeds)
        out = self.pipe(
            example_image=[example] * k,
            image=[prep.work_image] * k,
            mask_image=[mask_image] * k,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=cpu_generators(seeds),
            output_type="np",
        )
        record = self.record(
            prep, seeds, method="paint_by_example",
            sent={"example": example_source, "example_size": list(example.size)},
            steps=steps, guidance_scale=guidance_scale, size=size, restore=restore, feather=feather,
        )
        return self.finish(prep, float_images_to_pil(out.images), seeds, record, restore=restore, feather=feather)
