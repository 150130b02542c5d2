"""`inpaint`: remove the referred object with a diffusion model.

Two ways, chosen by the model's UNet:
- a text-to-image model (4-channel UNet, `sd15` by default): Blended Latent Diffusion
  (`region_edit.blended_denoise`) with a background prompt ("background" unless `text` is given) and,
  by default, no skipped steps: starting from the noised source would keep the object's layout, which
  removal is meant to lose;
- a Stable Diffusion inpainting model (9-channel UNet: noisy latent, mask, masked-image latent;
  `sd-inpaint`, `tiny-sd-inpaint`): diffusers' `StableDiffusionInpaintPipeline` on the loaded components,
  with Stable Diffusion's DDIM (`models.components.sd_ddim_scheduler`: the source's settings,
  `clip_sample=False`). The candidates are batched in one call by repeating the image, mask and prompt
  once per candidate with one generator per seed, so that candidate i gets exactly the noise and the
  masked-image latent sample that a single call with its seed gets.

Either way the result goes back to the source's size, the background outside a feathered mask is
copied from the source (`restore`, on by default) and the edit mask M_e is computed as in `base`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from refcoco_edit.errors import InputError
from refcoco_edit.pipelines.base import (
    DEFAULT_FEATHER,
    Candidate,
    check_feather,
    check_steps,
    cpu_generators,
    float_images_to_pil,
    place,
    prepare_inputs,
    seeds_for,
)
from refcoco_edit.pipelines.capabilities import EditRequest
from refcoco_edit.pipelines.diffusion import DiffusionEditPipeline

logger = logging.getLogger(__name__)

NAME = "inpaint"
DEFAULT_MODEL = "sd15"
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5
BACKGROUND_PROMPT = "background"
SD_PARTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


def background_prompt(text: str | None) -> str:
    """The prompt a removal sends: the given text, else `BACKGROUND_PROMPT`."""
    return text.strip() if text and text.strip() else BACKGROUND_PROMPT


class InpaintPipeline(DiffusionEditPipeline):
    """Object removal: Blended Latent Diffusion with a background prompt, or a 9-channel SD
    inpainting model (see the module docstring). `components`: the parts of a loaded Stable
    Diffusion pipeline (vae, text_encoder, tokenizer, unet, scheduler) to use instead of loading."""

    name = NAME
    label = "removal (diffusion inpainting)"
    edit_types = ("remove",)
    default_model = DEFAULT_MODEL
    takes_text = True
    ranks = True

    def __init__(self, model: str | None = None, overrides: Mapping[str, str] | None = None, device: Any = None,
                 dtype: Any = None, *, progress: bool = True, components: Mapping[str, Any] | None = None) -> None:
        super().__init__(model, overrides, device, dtype, progress=progress, pipe=components)
        if self._bld is not None:  # its records name the folder this pipeline loaded
            self._bld.model_folder = self.model_folder

    @staticmethod
    def unet_of(loaded: Mapping[str, Any]) -> Any:
        return loaded["unet"]

    def load(self, name: str, overrides: Mapping[str, str]) -> dict[str, Any]:
        """vae, text_encoder, tokenizer, unet and a DDIM scheduler of a Stable Diffusion folder/Hub id of
        any kind (text-to-image or inpainting), on the device in the dtype."""
        from diffusers import DiffusionPipeline

        from refcoco_edit.models.components import sd_ddim_scheduler
        from refcoco_edit.models.resolver import load_pretrained

        def loader(src: str):
            return DiffusionPipeline.from_pretrained(src, safety_checker=None, requires_safety_checker=False)

        pipe = load_pretrained(name, loader, overrides)
        missing = [c for c in SD_PARTS if getattr(pipe, c, None) is None]
        if missing:
            raise InputError(f"model {name!r} is not a Stable Diffusion pipeline (no {', '.join(missing)})")
        pipe = place(pipe, self.device, self.dtype)
        return {**{c: getattr(pipe, c) for c in SD_PARTS}, "scheduler": sd_ddim_scheduler(pipe.scheduler)}

    def prepare(self, loaded: Mapping[str, Any]) -> Any:
        """The inpainting pipeline (9-channel UNet) or the blended-latent one (4 channels) on the parts."""
        from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

        parts = place({key: loaded[key] for key in SD_PARTS}, self.device, self.dtype)
        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        in_channels = parts["unet"].config.in_channels
        if in_channels == 9:
            self.method = "sd_inpainting"
            self._bld = None
            return StableDiffusionInpaintPipeline(**parts, **extra)
        if in_channels == 4:
            from refcoco_edit.pipelines.region_edit import RegionEditPipeline

            self.method = "blended_latent_diffusion"
            pipe = StableDiffusionPipeline(**parts, **extra)
            self._bld = RegionEditPipeline(
                self.model, self.overrides, self.device, self.dtype, progress=self.progress, pipe=pipe
            )
            return pipe
        raise InputError(
            f"model {self.model!r} has a {in_channels}-channel UNet; removal needs a text-to-image "
            "(4) or an inpainting (9) Stable Diffusion model"
        )

    @classmethod
    def prompt_sent(cls, request: EditRequest) -> str:
        return background_prompt(request.text)

    def generate(
        self,
        image: Any,
        mask: Any,
        *,
        text: str | None = None,
        num: int = 1,
        seed: int = 0,
        steps: int = DEFAULT_STEPS,
        size: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE,
        skip: float = 0.0,
        negative_prompt: str = "",
        restore: bool = True,
        feather: int = DEFAULT_FEATHER,
        rank_by: str | None = None,
    ) -> list[Candidate]:
        """`num` removal candidates (seeds seed, seed+1, ...). `text` is the background prompt;
        `skip` applies to the blended-latent method only."""
        prompt = background_prompt(text)
        if self._bld is not None:
            return self._bld.generate(
                image, mask, text=prompt, num=num, seed=seed, steps=steps, size=size,
                guidance_scale=guidance_scale, skip=skip, negative_prompt=negative_prompt,
                restore=restore, feather=feather, rank_by=rank_by, _pipeline_name=self.name,
            )
        if skip:
            raise InputError("skip is for the blended-latent method; an inpainting model always runs every step")
        if rank_by:
            raise InputError("CLIP ranking is for the blended-latent method (a text-to-image model)")
        return self._generate_sd_inpaint(
            image, mask, prompt=prompt, num=num, seed=seed, steps=check_steps(steps), size=size,
            guidance_scale=guidance_scale, negative_prompt=negative_prompt, restore=restore, feather=feather,
        )

    def _generate_sd_inpaint(
        self, image: Any, mask: Any, *, prompt: str, num: int, seed: int, steps: int, size: int | None,
        guidance_scale: float, negative_prompt: str, restore: bool, feather: int,
    ) -> list[Candidate]:
        from PIL import Image

        check_feather(feather)
        prep = prepare_inputs(image, mask, size=size)
        seeds = seeds_for(seed, num)
        w, h = prep.work_size
        mask_image = Image.fromarray(prep.work_mask * np.uint8(255))
        k = len(seeds)
        out = self.pipe(
            prompt=[prompt] * k,
            image=[prep.work_image] * k,
            mask_image=[mask_image] * k,
            negative_prompt=[negative_prompt] * k if negative_prompt else None,
            height=h,
            width=w,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=cpu_generators(seeds),
            output_type="np",
        )
        record = self.record(
            prep, seeds, method=self.method, sent={"prompt": prompt, "negative_prompt": negative_prompt},
            steps=steps, guidance_scale=guidance_scale, size=size, restore=restore, feather=feather,
        )
        return self.finish(prep, float_images_to_pil(out.images), seeds, record, restore=restore, feather=feather)
