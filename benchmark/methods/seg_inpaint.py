"""`seg_inpaint`: the two-stage baseline of the paper's Fig. 3: referring segmentation, then inpainting.

Stage 1 finds the referred object with a pluggable segmenter (`segmenter` option: `gt`, the
dataset's own mask, an oracle and the default, since no referring-segmentation weights ship with
the toolkit; `refshapes`, exact on RefShapes data; or "module:Class", see `segmenters`). Stage 2
fills that mask with an inpainting pipeline of `refcoco_edit.pipelines` (`inpainter` option):

- `inpaint` (default, model `sd-inpaint`, a 9-channel Stable Diffusion inpainting model; a 4-channel
  model runs Blended Latent Diffusion instead) with the edit part P_e as the prompt, or the pipeline's
  background prompt for removals;
- `classical_inpaint`: OpenCV, no weights, no text (a removal-only baseline);
- any other registered pipeline that declares removal among its edit types. What the method passes
  and whether it loads weights are read from the pipeline class's declared capabilities
  (`needs_weights`, `takes_text`, `generate_kwargs`), not from its name.

The segmenter is part of the method's label, so oracle and non-oracle runs are told apart. When the
segmenter finds nothing (or the whole image) the source is returned unchanged: a failed referring
step is a failed edit, not an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmark.methods.base import EditResult, Method
from refcoco_edit.errors import InputError
from refcoco_edit.imaging.masks import mask_iou
from refcoco_edit.pipelines.capabilities import EditPipeline, EditRequest

INPAINTERS = ("inpaint", "classical_inpaint")  # the built-in removal pipelines (others may be registered)


class SegInpaintMethod(Method):
    name = "seg_inpaint"
    description = "referring segmentation (pluggable; gt oracle by default) then inpainting with P_e"
    default_model = "sd-inpaint"
    reads = ("source_image", "referring_text", "edit_text", "edit_type")
    default_steps = 50
    default_size = 512
    option_defaults = {"segmenter": "gt", "inpainter": "inpaint", "guidance_scale": 7.5, "refshapes_root": ""}

    def __init__(self, **kwargs: Any) -> None:
        from refcoco_edit.pipelines import PIPELINES, pipeline_class

        super().__init__(**kwargs)
        name = self.options["inpainter"]
        if name not in PIPELINES:
            raise InputError(f"seg_inpaint option inpainter must be a pipeline ({', '.join(INPAINTERS)}, ...); "
                             f"got {name!r}")
        self.inpainter: type[EditPipeline] = pipeline_class(name)
        if "remove" not in self.inpainter.edit_types:
            raise InputError(f"seg_inpaint option inpainter={name}: that pipeline does not remove objects "
                             f"(its edits: {', '.join(self.inpainter.edit_types)})")
        if not self.inpainter.needs_weights:
            if kwargs.get("model") is not None:
                raise InputError(f"seg_inpaint with inpainter={name} uses no model; drop --method-model")
            self.model_name = None  # no weights, no denoising steps, its own working size
            self.steps = None
            self.size = None
        from benchmark.methods.segmenters import create_segmenter

        self.segmenter = create_segmenter(self.options["segmenter"], refshapes_root=self.options["refshapes_root"])
        self.reads = tuple(dict.fromkeys((*self.segmenter.reads, "source_image", "edit_text", "edit_type")))
        self.pipeline: Any = None

    def availability(self) -> str | None:
        return self.segmenter.availability() or super().availability()

    def setup(self) -> None:
        from refcoco_edit.pipelines import get_pipeline

        self.segmenter.setup()
        name = self.options["inpainter"]
        if self.inpainter.needs_weights:
            self.pipeline = get_pipeline(name, self.model_name, self.overrides, self.device, self.dtype,
                                         progress=self.progress)
        else:
            self.pipeline = get_pipeline(name)

    def label(self) -> str:
        base = super().label()
        extra = [f"seg={self.options['segmenter']}"]
        if self.options["inpainter"] != "inpaint":
            extra.append(self.options["inpainter"])
        return f"{base}[{', '.join(extra)}]"

    def edit(self, sample: Any, *, seed: int) -> Any:
        source = sample.source_image
        mask = np.asarray(self.segmenter.segment(sample), dtype=np.uint8)
        area = int(mask.sum())
        info: dict[str, Any] = {"segmenter": self.segmenter.name or self.options["segmenter"], "mask_area": area}
        if sample.source_mask is not None and np.asarray(sample.source_mask).shape == mask.shape:
            info["mask_iou"] = mask_iou(mask, sample.source_mask)
        if area == 0 or area == mask.size:
            info["skipped"] = "empty segmentation" if area == 0 else "segmentation covers the whole image"
            return EditResult(source.convert("RGB"), info)
        request = EditRequest(
            num=1, seed=seed, text=None if sample.edit_type == "remove" else sample.edit_text, steps=self.steps,
            size=self.size, guidance_scale=float(self.options["guidance_scale"]) if self.inpainter.needs_weights
            else None,
        )
        if self.inpainter.takes_text:
            info["text"] = request.text
        cand = self.pipeline.generate(source, mask, **self.inpainter.generate_kwargs(request))[0]
        return EditResult(cand.image, info)
