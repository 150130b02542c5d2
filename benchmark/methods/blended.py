"""`blended`: Blended Latent Diffusion (Avrahami et al.) given the ground-truth mask of the referred
object and the edit part P_e of the prompt, as the paper runs it.

The method is told *where* to edit (the source mask M) instead of having to find the referred object,
so it measures editing quality without referring comprehension. It runs the `region_edit` pipeline
of `refcoco_edit.pipelines` (DDIM, latent blending at every step, background restored outside a
feathered mask) with its defaults: guidance 7.5, 25% of the steps skipped. Working size: the longer
side 512 unless `--size` says otherwise; the result comes back at the source's size.

Options: `text` = "edit" (P_e, default), "target" (the dataset's target words, P_e when empty) or
"prompt" (the whole prompt); `guidance_scale`, `skip`, `restore`, `feather`.
"""

from __future__ import annotations

from typing import Any

from benchmark.methods.base import EditResult, Method
from refcoco_edit.errors import InputError

TEXTS = ("edit", "target", "prompt")


class BlendedMethod(Method):
    name = "blended"
    description = "Blended Latent Diffusion with the ground-truth object mask and P_e (oracle mask)"
    default_model = "sd15"
    reads = ("source_image", "source_mask", "edit_text")
    default_steps = 50
    default_size = 512
    option_defaults = {"text": "edit", "guidance_scale": 7.5, "skip": 0.25, "restore": True, "feather": 8}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.options["text"] not in TEXTS:
            raise InputError(f"blended option text must be one of {', '.join(TEXTS)}, got {self.options['text']!r}")
        self.pipeline: Any = None

    def setup(self) -> None:
        from refcoco_edit.pipelines import get_pipeline

        self.pipeline = get_pipeline(
            "region_edit", self.model_name, self.overrides, self.device, self.dtype, progress=self.progress
        )

    def text_for(self, sample: Any) -> str:
        which = self.options["text"]
        if which == "prompt":
            return sample.prompt
        if which == "target" and (sample.target or "").strip():
            return sample.target
        return sample.edit_text

    def edit(self, sample: Any, *, seed: int) -> Any:
        text = self.text_for(sample)
        cand = self.pipeline.generate(
            sample.source_image, sample.source_mask, text=text, num=1, seed=seed, steps=self.steps, size=self.size,
            guidance_scale=float(self.options["guidance_scale"]), skip=float(self.options["skip"]),
            restore=bool(self.options["restore"]), feather=int(self.options["feather"]),
        )[0]
        return EditResult(cand.image, {"text": text})
