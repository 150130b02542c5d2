"""`ReferDiffusionPipeline`: InstructPix2Pix sampling with the Region-Embedder Module's condition.

The denoising loop is InstructPix2Pix's (diffusers' `StableDiffusionInstructPix2PixPipeline`): three
classifier-free-guidance branches [text + image, image only, neither], with

    eps = eps_uncond + s_T (eps_text - eps_image) + s_I (eps_image - eps_uncond).

The one difference: the UNet's `encoder_hidden_states` is the REM's condition c(F_P, F_s) instead of F_P.
The REM runs once per call (it does not depend on the timestep), on each branch's own prompt embedding
and image latent (the null prompt's embedding, zero image latent where a branch drops them), the same
inputs the trainer's classifier-free dropout gives it. With a fresh REM (zero gate) c == F_P bit for bit,
so the pipeline reproduces InstructPix2Pix exactly.

Besides the edited images the pipeline returns the REM's predicted mask of the referred object, from the
text + image branch: sigmoid of the mask logits, upsampled bilinearly from latent to image resolution.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from referdiffusion.rem import RegionEmbedder, upsample_mask_logits

DEFAULT_STEPS = 50


@dataclass
class ReferDiffusionPipelineOutput(BaseOutput):
    """`images` as `output_type` asks (list of PIL images, N x H x W x 3 array, or N x 3 x H x W tensor);
    `masks`: the predicted referred-object masks at image size: list of mode-"L" PIL images (thresholded at
    `mask_threshold` to 0/255, or grey levels of the probability when it is None), N x H x W float array
    or tensor of probabilities for "np" and "pt"/"latent"."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    masks: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class ReferDiffusionPipeline(DiffusionPipeline, StableDiffusionMixin):
    """Referring image editing: source image + instruction -> edited image + mask of the referred object.

    Components: `vae`, `text_encoder`, `tokenizer`, `unet` (InstructPix2Pix's 8-channel UNet), `scheduler`
    (DDIM in the checkpoints `referdiffusion init` writes) and `rem` (`RegionEmbedder`). There is no
    safety checker. Load a checkpoint with `ReferDiffusionPipeline.from_pretrained(DIR)`: its model_index.json
    names the REM as `["referdiffusion.rem", "RegionEmbedder"]`, which diffusers imports from this package.

    With several images per prompt, output i * n + j is the j-th image of input i (diffusers' InstructPix2Pix
    pairs them differently when it gets several prompts *and* several images per prompt).
    """

    model_cpu_offload_seq = "text_encoder->rem->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "image_latents"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> ReferDiffusionPipeline:
        """diffusers' loader, then every component in one dtype: `torch_dtype` when given, else float32.

        Why: diffusers loads its own models (UNet, VAE, REM) in float32 whatever their config says, while
        transformers 5 loads the text encoder in the dtype its config names; a checkpoint holding a
        float16 text encoder would otherwise fail at the first step with mismatched dtypes."""
        from refcoco_edit.models.components import place_components

        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
        if dtype is None or isinstance(dtype, torch.dtype):  # a per-component mapping is the caller's choice
            place_components(pipe, None, dtype or torch.float32)
        return pipe

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        rem: RegionEmbedder,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, rem=rem
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ----------------------------------------------------------------------------------------
    # inputs

    def _encode_text(self, texts: list[str], device: torch.device,
                     max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = enc.attention_mask.to(device)
        embeds = self.text_encoder(enc.input_ids.to(device), attention_mask=mask if use_mask else None)[0]
        return embeds, mask

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """F_P for all guidance branches, ordered [prompt, negative, negative] as InstructPix2Pix, and the
        token masks the REM pools with (all ones for embeddings passed without a mask)."""
        batch_size = len(prompt) if isinstance(prompt, list) else 1 if prompt is not None else prompt_embeds.shape[0]
        if prompt_embeds is None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, prompt_attention_mask = self._encode_text(texts, device, self.tokenizer.model_max_length)
        elif prompt_attention_mask is None:
            prompt_attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=device)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)
        prompt_attention_mask = prompt_attention_mask.to(device)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        prompt_attention_mask = prompt_attention_mask.repeat_interleave(num_images_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, prompt_attention_mask

        if negative_prompt_embeds is None:
            if negative_prompt is None:
                uncond = [""] * batch_size
            elif isinstance(negative_prompt, str):
                uncond = [negative_prompt] * batch_size
            elif len(negative_prompt) != batch_size:
                raise ValueError(f"{len(negative_prompt)} negative prompts for {batch_size} prompts")
            else:
                uncond = list(negative_prompt)
            negative_prompt_embeds, negative_prompt_attention_mask = self._encode_text(
                uncond, device, prompt_embeds.shape[1]
            )
        elif negative_prompt_attention_mask is None:
            negative_prompt_attention_mask = torch.ones(negative_prompt_embeds.shape[:2], dtype=torch.long,
                                                        device=device)
        negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
        negative_prompt_attention_mask = negative_prompt_attention_mask.to(device)
        negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        negative_prompt_attention_mask = negative_prompt_attention_mask.repeat_interleave(num_images_per_prompt, dim=0)
        embeds = torch.cat([prompt_embeds, negative_prompt_embeds, negative_prompt_embeds])
        masks = torch.cat([prompt_attention_mask, negative_prompt_attention_mask, negative_prompt_attention_mask])
        return embeds, masks

    def prepare_image_latents(
        self,
        image: torch.Tensor,
        batch_size: int,
        num_images_per_prompt: int,
        dtype: torch.dtype,
        device: torch.device,
        do_classifier_free_guidance: bool,
    ) -> torch.Tensor:
        """The source's VAE latent (mode, unscaled, as InstructPix2Pix), one per output image; with guidance
        ordered [image, image, zeros]."""
        image = image.to(device=device, dtype=dtype)
        total = batch_size * num_images_per_prompt
        if image.shape[1] == self.vae.config.latent_channels:
            image_latents = image
        else:
            image_latents = self.vae.encode(image).latent_dist.mode()
        if image_latents.shape[0] == 1 and batch_size > 1:  # one source image for several prompts
            image_latents = image_latents.expand(batch_size, -1, -1, -1)
        if image_latents.shape[0] == batch_size:
            image_latents = image_latents.repeat_interleave(num_images_per_prompt, dim=0)
        elif image_latents.shape[0] != total:
            raise ValueError(f"{image_latents.shape[0]} images for {batch_size} prompts")
        if do_classifier_free_guidance:
            image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)], dim=0)
        return image_latents

    def prepare_latents(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device)
        return latents * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None,
                                  eta: float) -> dict[str, Any]:
        params = set(inspect.signature(self.scheduler.step).parameters)
        extra: dict[str, Any] = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra

    # ----------------------------------------------------------------------------------------
    # outputs

    def postprocess_masks(
        self, mask_logits: torch.Tensor, size: tuple[int, int], output_type: str, threshold: float | None
    ) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """Latent-resolution logits -> probabilities at image size, in the format `output_type` asks."""
        probs = torch.sigmoid(upsample_mask_logits(mask_logits, size))
        if output_type in ("pt", "latent"):
            return probs
        arr = probs.cpu().numpy()
        if output_type == "np":
            return arr
        if threshold is None:
            return [PIL.Image.fromarray(np.round(a * 255).astype(np.uint8), mode="L") for a in arr]
        return [PIL.Image.fromarray(((a > threshold) * 255).astype(np.uint8), mode="L") for a in arr]

    @torch.no_grad()
    def generate_mask(
        self,
        prompt: str | list[str] | None = None,
        image: PipelineImageInput = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        mask_threshold: float | None = 0.5,
    ) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """The REM's mask of the referred object alone, without denoising: the `masks` that `__call__`
        returns for the same prompts and images (the REM sees each sample on its own, so the guidance
        branches `__call__` adds do not change it), at a fraction of the cost. For reading or scoring
        the REM (as DiffEdit's `generate_mask`); `output_type` and `mask_threshold` as in `__call__`."""
        if image is None:
            raise ValueError("`image` input cannot be undefined.")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be pil, np, pt or latent, got {output_type!r}")
        device = self._execution_device
        pixels = self.image_processor.preprocess(image)
        if isinstance(prompt, str) and pixels.shape[0] > 1:
            prompt = [prompt] * pixels.shape[0]
        batch_size = len(prompt) if isinstance(prompt, list) else 1 if prompt is not None else prompt_embeds.shape[0]
        embeds, token_mask = self.encode_prompt(prompt, device, 1, False, prompt_embeds=prompt_embeds,
                                                prompt_attention_mask=prompt_attention_mask)
        image_latents = self.prepare_image_latents(pixels, batch_size, 1, embeds.dtype, device, False)
        logits = self.rem(embeds, image_latents, token_mask).mask_logits
        h, w = image_latents.shape[-2:]
        size = (h * self.vae_scale_factor, w * self.vae_scale_factor)
        masks = self.postprocess_masks(logits, size, output_type, mask_threshold)
        self.maybe_free_model_hooks()
        return masks

    # ----------------------------------------------------------------------------------------

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def image_guidance_scale(self) -> float:
        return self._image_guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0 and self._image_guidance_scale >= 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: PipelineImageInput = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        mask_threshold: float | None = 0.5,
    ) -> ReferDiffusionPipelineOutput | tuple:
        """Edit `image` (one or a list) following `prompt` (one, broadcast over the images, or one per image;
        one image is likewise broadcast over several prompts).

        Arguments as `StableDiffusionInstructPix2PixPipeline.__call__` (50 steps by default); in addition
        `prompt_attention_mask`/`negative_prompt_attention_mask` go with precomputed embeddings (the REM pools
        over real tokens only; all tokens count when they are missing) and `mask_threshold` binarises the
        PIL masks (None: grey levels). Returns `ReferDiffusionPipelineOutput(images, masks)`, or the tuple
        (images, masks) when `return_dict` is False.
        """
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        if any(k not in self._callback_tensor_inputs for k in tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}")
        if image is None:
            raise ValueError("`image` input cannot be undefined.")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be pil, np, pt or latent, got {output_type!r}")
        self._guidance_scale = guidance_scale
        self._image_guidance_scale = image_guidance_scale
        device = self._execution_device

        # 1. images first: a single prompt is broadcast over a list of images.
        image = self.image_processor.preprocess(image)
        if isinstance(prompt, str) and image.shape[0] > 1:
            prompt = [prompt] * image.shape[0]
        batch_size = len(prompt) if isinstance(prompt, list) else 1 if prompt is not None else prompt_embeds.shape[0]

        # 2. F_P for every guidance branch, with the token masks.
        embeds, token_mask = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask,
        )

        # 3. timesteps, source latents, noise.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        image_latents = self.prepare_image_latents(
            image, batch_size, num_images_per_prompt, embeds.dtype, device, self.do_classifier_free_guidance
        )
        num_channels_latents = self.vae.config.latent_channels
        if num_channels_latents + image_latents.shape[1] != self.unet.config.in_channels:
            raise ValueError(
                f"the UNet expects {self.unet.config.in_channels} input channels, got {num_channels_latents} + "
                f"{image_latents.shape[1]}"
            )
        h, w = image_latents.shape[-2:]
        latents = self.prepare_latents(
            (batch_size * num_images_per_prompt, num_channels_latents, h, w), embeds.dtype, device, generator, latents
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 4. the REM's condition: computed once, it does not depend on the timestep.
        rem_out = self.rem(embeds, image_latents, token_mask)
        prompt_embeds = rem_out.condition
        n = batch_size * num_images_per_prompt
        mask_logits = rem_out.mask_logits[:n]

        # 5. denoising loop (InstructPix2Pix's).
        self._num_timesteps = len(timesteps)
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 3) if self.do_classifier_free_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                model_input = torch.cat([model_input, image_latents], dim=1)
                noise_pred = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False,
                )[0]
                if self.do_classifier_free_guidance:
                    text, img, uncond = noise_pred.chunk(3)
                    noise_pred = (
                        uncond
                        + self.guidance_scale * (text - img)
                        + self.image_guidance_scale * (img - uncond)
                    )
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds, "image_latents": image_latents}
                    outputs = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs}) or {}
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    image_latents = outputs.pop("image_latents", image_latents)
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 6. decode.
        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            images = self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=[True] * n)
        size = (h * self.vae_scale_factor, w * self.vae_scale_factor)
        masks = self.postprocess_masks(mask_logits, size, output_type, mask_threshold)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, masks
        return ReferDiffusionPipelineOutput(images=images, masks=masks)
