"""Benchmark methods: one adapter class each, registered by name, imported only when used.

| name | what | weights (resolver name) | reads besides the source |
|---|---|---|---|
| identity | the source, unchanged (lower bound) | none | nothing |
| reference | the dataset's I_e (upper bound) | none | edited_image |
| blended | Blended Latent Diffusion, ground-truth mask + P_e | sd15 | source_mask, edit_text |
| ip2p | InstructPix2Pix, prompt + " and do not change any pixel else" | ip2p | prompt |
| magicbrush | MagicBrush, same adapter | magicbrush | prompt |
| instructdiffusion | InstructDiffusion's own guidance | instructdiffusion | prompt |
| seg_inpaint | segmentation, then inpainting (Fig. 3) | sd-inpaint | referring_text, edit_text (+ segmenter's) |
| referdiffusion | ReferDiffusion checkpoint | folder (--method-model) | prompt |

Adding a method is one class: subclass `Method`, set `name`, load weights in `setup`, return the edited
image from `edit`; register it, or name it by its import path.

    # mypkg/posterize.py
    from PIL import ImageOps
    from benchmark.methods import Method, register_method

    class Posterize(Method):
        name = "posterize"
        description = "posterizes the whole picture (a toy)"
        reads = ("source_image",)
        option_defaults = {"bits": 3}          # --method-option bits=2

        def edit(self, sample, *, seed):
            return ImageOps.posterize(sample.source_image.convert("RGB"), self.options["bits"])

    register_method("posterize", Posterize)   # or: rie-bench run --method mypkg.posterize:Posterize ...

`sample` is a `refcoco_edit.schema.Sample` (PIL `source_image`, `prompt`, `referring_text`, `edit_text`,
0/1 `source_mask`, ...); read only what your method may know. A method with weights sets
`default_model` to a resolver name (`refcoco_edit.models.resolver`), loads with `self.model_name` and
`self.overrides` in `setup`, and uses `self.steps`, `self.size`, `self.device` as the run sets them.
"""

from benchmark.methods.base import (
    INSTRUCTION_SUFFIX,
    METHODS,
    EditResult,
    Method,
    create_method,
    get_method_class,
    method_names,
    register_method,
)

__all__ = [
    "INSTRUCTION_SUFFIX",
    "METHODS",
    "EditResult",
    "Method",
    "create_method",
    "get_method_class",
    "method_names",
    "register_method",
]
