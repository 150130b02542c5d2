"""`instructdiffusion`: InstructDiffusion (Geng et al., 2023) with its own classifier-free guidance.

InstructDiffusion runs an InstructPix2Pix-style UNet (noisy latent and source latent stacked on the
channels) three times per step, on [text + image], [null text + image] and [text + zero image], and
combines the noise predictions as its `edit_cli.py` does:

    eps = 0.5 (e(img, 0) + e(0, txt)) + s_T (e_full - e(img, 0)) + s_I (e_full - e(0, txt))

where e(img, 0) has the image but not the text and e(0, txt) the text but not the image. This differs
from InstructPix2Pix's guidance (whose third branch drops both). Defaults are those of its
`edit_cli.py`: s_T = 5.0 (`--cfg-text`), s_I = 1.25 (`--cfg-image`), 100 steps, Euler ancestral
sampling, working resolution 512. The source latent is the VAE posterior's mode, unscaled, as in
InstructPix2Pix; the zero-image branch gets a zero latent.

Weights: InstructDiffusion ships an LDM checkpoint only; the method loads a diffusers-format conversion
laid out like an InstructPix2Pix folder (unet with 8 input channels, vae, text_encoder, tokenizer,
scheduler), named by the resolver name `instructdiffusion` (no default: `--model
instructdiffusion=DIR` or `--method-model DIR`). Differences from the original script: the source is
resized to multiples of 8 without cropping (theirs: multiples of 64, `ImageOps.fit`), and the
prompt gets the paper's instruction suffix, as the other instruction methods do.

Options: `text_guidance_scale`, `image_guidance_scale`, `scheduler` ("euler_ancestral" or
"checkpoint": the folder's own), `suffix`.
"""

from __future__ import annotations

import inspect
from typing import Any

from benchmark.methods.base import INSTRUCTION_SUFFIX, EditResult, Method
from refcoco_edit.errors import InputError

DEFAULT_TEXT_SCALE = 5.0
DEFAULT_IMAGE_SCALE = 1.25
SCHEDULERS = ("euler_ancestral", "checkpoint")


def instructdiffusion_guidance(e_full: Any, e_img: Any, e_txt: Any, text_scale: float, image_scale: float) -> Any:
    """InstructDiffusion's combination of the three branches (see the module docstring).

    `e_full`: text and image; `e_img`: image only (null text); `e_txt`: text only (zero image)."""
    return 0.5 * (e_img + e_txt) + text_scale * (e_full - e_img) + image_scale * (e_full - e_txt)


def denoise(
    unet: Any,
    scheduler: Any,
    *,
    latents: Any,
    image_latents: Any,
    text_embeds: Any,
    null_embeds: Any,
    steps: int,
    text_scale: float = DEFAULT_TEXT_SCALE,
    image_scale: float = DEFAULT_IMAGE_SCALE,
    generator: Any = None,
) -> Any:
    """The sampling loop: `latents` is unit-variance noise (scaled here by the scheduler's initial
    sigma); returns the clean latents. One batched UNet call per step over the three branches,
    ordered [text + image, null + image, text + zero image]."""
    import torch

    scheduler.set_timesteps(steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    images = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
    texts = torch.cat([text_embeds, null_embeds, text_embeds])
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 3), t)
        eps = unet(torch.cat([x, images], dim=1), t, encoder_hidden_states=texts, return_dict=False)[0]
        e_full, e_img, e_txt = eps.chunk(3)
        guided = instructdiffusion_guidance(e_full, e_img, e_txt, text_scale, image_scale)
        latents = scheduler.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
    return latents


class InstructDiffusionMethod(Method):
    name = "instructdiffusion"
    description = "InstructDiffusion (diffusers-format conversion) with its own guidance formula"
    default_model = "instructdiffusion"
    reads = ("source_image", "prompt")
    default_steps = 100
    default_size = 512
    option_defaults = {
        "text_guidance_scale": DEFAULT_TEXT_SCALE,
        "image_guidance_scale": DEFAULT_IMAGE_SCALE,
        "scheduler": "euler_ancestral",
        "suffix": INSTRUCTION_SUFFIX,
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.options["scheduler"] not in SCHEDULERS:
            raise InputError(f"instructdiffusion option scheduler must be one of {', '.join(SCHEDULERS)}")
        self.pipe: Any = None
        self.scheduler: Any = None

    def setup(self) -> None:
        from benchmark.methods._common import device_and_dtype, load_instruct_pix2pix

        self.device, self.dtype = device_and_dtype(self.device, self.dtype)
        self.pipe = load_instruct_pix2pix(self.model_name, self.overrides, self.device, self.dtype,
                                          progress=self.progress)
        self.scheduler = self.pipe.scheduler
        if self.options["scheduler"] == "euler_ancestral":
            from diffusers import EulerAncestralDiscreteScheduler

            self.scheduler = EulerAncestralDiscreteScheduler.from_config(self.pipe.scheduler.config)

    def _embed(self, text: str) -> Any:
        tok = self.pipe.tokenizer
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return self.pipe.text_encoder(ids.input_ids.to(self.device))[0].to(self.dtype)

    def edit(self, sample: Any, *, seed: int) -> Any:
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        from benchmark.methods._common import back_to_source, cpu_generator, working_image

        source = sample.source_image
        prompt = sample.prompt + self.options["suffix"]
        pipe = self.pipe
        work = working_image(source, self.size)
        with torch.inference_mode():
            pixels = pipe.image_processor.preprocess(work).to(self.device, self.dtype)
            image_latents = pipe.vae.encode(pixels).latent_dist.mode()
            generator = cpu_generator(seed)
            shape = (1, pipe.vae.config.latent_channels, *image_latents.shape[-2:])
            noise = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
            latents = denoise(
                pipe.unet, self.scheduler, latents=noise, image_latents=image_latents,
                text_embeds=self._embed(prompt), null_embeds=self._embed(""), steps=self.steps,
                text_scale=float(self.options["text_guidance_scale"]),
                image_scale=float(self.options["image_guidance_scale"]), generator=generator,
            )
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            image = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
        return EditResult(back_to_source(image, source.size), {"prompt_sent": prompt})
