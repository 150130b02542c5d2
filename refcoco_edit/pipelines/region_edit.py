"""`region_edit`: Blended Latent Diffusion (Avrahami et al., 2023) on Stable Diffusion components.

A text-to-image latent diffusion model edits only the region the annotator drew:

1. the source image (at the working size, sides multiples of 8) is encoded by the VAE; its latent is
   the posterior *mean* times the VAE's scaling factor (no sampling, so the source term is exact);
2. the mask is brought to latent resolution by max-pooling over each 8x8 block ("a latent cell is
   edited when any of its pixels is in the mask", so thin objects do not vanish) and is binary;
3. each candidate draws its noise from its own seed (a CPU generator, so the same on every device);
   denoising starts from that noise, or, when the first `skip` fraction of the steps is skipped, from
   the source latent noised to the first remaining timestep;
4. DDIM with classifier-free guidance; after EVERY step i (at timestep t_i, which yields the latent of
   the next timestep t_{i+1}) the latent outside the mask is replaced by the source latent noised to
   t_{i+1} with the candidate's initial noise (`scheduler.add_noise(src, noise, t_{i+1})`); after the
   last step, whose output is the clean latent, by the clean source latent itself. This is the
   convention of diffusers' own inpaint pipeline with a 4-channel UNet (the noise is drawn once per
   candidate; the BLD reference code draws fresh noise at every step, which only changes which
   random sample the background carries);
5. the latents are decoded, the image is resized back to the source's size and, by default, the
   background outside a feathered mask is copied from the source, so that unedited pixels are exactly
   the source's.

Defaults follow the BLD paper: 50 DDIM steps, guidance scale 7.5, 25% of the steps skipped. The number
of skipped steps is `steps - int(steps * (1 - skip))`, diffusers' `strength` rule (50 steps, skip 0.25
-> 13 skipped, 37 run). Candidates are batched in one forward pass (batch = candidates, doubled by
classifier-free guidance). They can be ranked by the CLIP similarity between the edited region (crop of
the mask's bounding box, grey outside the mask) and the text.

`blended_denoise` is the blending loop on its own, for tests and for `inpaint`: with a mask of ones and
no skipped steps it is exactly plain text-to-image generation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from refcoco_edit.errors import InputError
from refcoco_edit.pipelines.base import (
    DEFAULT_FEATHER,
    VAE_FACTOR,
    Candidate,
    check_feather,
    check_steps,
    cpu_generators,
    float_images_to_pil,
    prepare_inputs,
    seeds_for,
)
from refcoco_edit.pipelines.diffusion import DiffusionEditPipeline

logger = logging.getLogger(__name__)

NAME = "region_edit"
DEFAULT_MODEL = "sd15"
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5
DEFAULT_SKIP = 0.25
CLIP_GREY = 128  # fills the pixels outside the mask inside the crop that CLIP ranks


# --------------------------------------------------------------------------------------------
# the blending core


def skipped_steps(steps: int, skip: float) -> int:
    """How many of the first steps are skipped: diffusers' strength rule with strength = 1 - skip."""
    if not 0.0 <= skip < 1.0:
        raise InputError(f"skip must be in [0, 1), got {skip}")
    first = steps - min(int(steps * (1.0 - skip)), steps)
    if first >= steps:
        raise InputError(f"skipping {skip:.0%} of {steps} steps leaves none to run")
    return first


def encode_source(vae: Any, image: Any, device: Any, dtype: Any):
    """VAE posterior mean x scaling factor of a PIL RGB image, shape (1, C, H/8, W/8)."""
    import torch

    arr = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None] * 2.0 - 1.0
    x = x.to(device=device, dtype=dtype)
    return vae.encode(x).latent_dist.mean * vae.config.scaling_factor


def latent_mask(mask: np.ndarray, device: Any, dtype: Any, factor: int = VAE_FACTOR):
    """(1, 1, H/f, W/f) tensor of 0 and 1: max-pooled over f x f blocks (any pixel inside -> 1)."""
    import torch

    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    pooled = torch.nn.functional.max_pool2d(m, kernel_size=factor, stride=factor, ceil_mode=True)
    return (pooled > 0).to(device=device, dtype=dtype)


def decode_latents(vae: Any, latents: Any) -> np.ndarray:
    """(N, H, W, 3) float32 in [0, 1], as diffusers' `output_type="np"` gives it."""
    image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()


def blended_denoise(
    unet: Any,
    scheduler: Any,
    *,
    source_latents: Any,
    mask: Any,
    noise: Any,
    prompt_embeds: Any,
    negative_embeds: Any | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE,
    num_inference_steps: int = DEFAULT_STEPS,
    skip_steps: int = 0,
    progress: bool = False,
):
    """The Blended Latent Diffusion loop; returns the final latents (K, C, h, w).

    source_latents: (1 or K, C, h, w) clean source latents (scaled); mask: (1 or K, 1, h, w) of 0/1,
    1 = generated, 0 = source; noise: (K, C, h, w), the starting noise and the noise of the background;
    prompt_embeds, negative_embeds: (K, L, D) (negative_embeds needed when guidance_scale > 1).
    After step i the latent outside the mask is the source noised to timesteps[i + 1], or the clean
    source after the last step (see the module docstring).
    """
    import torch

    k = noise.shape[0]
    do_cfg = guidance_scale > 1.0
    if do_cfg and negative_embeds is None:
        raise ValueError("guidance_scale > 1 needs negative_embeds")
    embeds = torch.cat([negative_embeds, prompt_embeds]) if do_cfg else prompt_embeds
    source = source_latents.expand(k, -1, -1, -1) if source_latents.shape[0] == 1 else source_latents
    mask = mask.to(dtype=noise.dtype)
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    timesteps = scheduler.timesteps[skip_steps * scheduler.order :]
    if skip_steps == 0:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(source, noise, timesteps[:1].repeat(k))
    steps = list(enumerate(timesteps))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="blended latent diffusion", leave=False)
    last = len(timesteps) - 1
    for i, t in steps:
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise_pred = unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if do_cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        if i < last:
            background = scheduler.add_noise(source, noise, timesteps[i + 1 : i + 2])
        else:
            background = source
        latents = (1 - mask) * background + mask * latents
    return latents


# --------------------------------------------------------------------------------------------
# CLIP ranking


def region_crop(image: Any, mask: np.ndarray, grey: int = CLIP_GREY):
    """The mask's bounding box of `image`, grey outside the mask: what CLIP compares with the text."""
    from PIL import Image

    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.asarray(image)[y0:y1, x0:x1].copy()
    crop[mask[y0:y1, x0:x1] == 0] = grey
    return Image.fromarray(crop)


class ClipRanker:
    """100 x cosine between CLIP embeddings of images and a text (model from the resolver), the model
    placed in `dtype` (None: as the pipeline's default, float32 on the CPU) whatever dtype it was saved in."""

    def __init__(self, name: str, overrides: Mapping[str, str] | None = None, device: Any = "cpu",
                 dtype: Any = None, *, progress: bool = False) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        try:  # the PIL processor: the default one wants torchvision, which this stack keeps out
            from transformers import CLIPImageProcessorPil as ImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor as ImageProcessor

        from refcoco_edit.models.components import place_components, quiet_libraries
        from refcoco_edit.models.resolver import load_pretrained
        from refcoco_edit.pipelines.base import resolve_dtype

        def loader(src: str):
            return (
                CLIPModel.from_pretrained(src).eval(),
                CLIPTokenizer.from_pretrained(src),
                ImageProcessor.from_pretrained(src),
            )

        self.name = name
        self.device = device
        self.dtype = resolve_dtype(device, dtype)
        with quiet_libraries(not progress):
            model, self.tokenizer, self.processor = load_pretrained(name, loader, overrides)
        self.model = place_components(model, device, self.dtype)

    @staticmethod
    def _features(out: Any):
        return out if hasattr(out, "norm") else out.pooler_output  # transformers >= 5: an output object

    def scores(self, images: Sequence[Any], text: str) -> list[float]:
        import torch

        max_len = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        with torch.inference_mode():
            pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.device, self.dtype)
            img = self._features(self.model.get_image_features(pixel_values=pixels))
            enc = self.tokenizer([text], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            txt = self._features(
                self.model.get_text_features(
                    input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)
                )
            )
            img = torch.nn.functional.normalize(img.float(), dim=-1)
            txt = torch.nn.functional.normalize(txt.float(), dim=-1)
            return [round(float(v), 6) for v in (100.0 * img @ txt[0]).cpu()]


def rank_candidates(candidates: list[Candidate], mask: np.ndarray, text: str, ranker: ClipRanker) -> list[Candidate]:
    """Score each candidate's edited region against `text`; best first (ties keep the seed order)."""
    scores = ranker.scores([region_crop(c.image, mask) for c in candidates], text)
    for cand, score in zip(candidates, scores):
        cand.score = score
        cand.params["clip_score"] = score
        cand.params["rank_model"] = ranker.name
    return sorted(candidates, key=lambda c: -c.score)


# --------------------------------------------------------------------------------------------
# the pipeline


class RegionEditPipeline(DiffusionEditPipeline):
    """Blended Latent Diffusion edits of a masked region from a text (see the module docstring)."""

    name = NAME
    label = "region edit (Blended Latent Diffusion)"
    edit_types = ("replace", "attribute", "add", "other")
    default_model = DEFAULT_MODEL
    takes_text = True
    needs_text = True
    ranks = True

    def __init__(self, model: str | None = None, overrides: Mapping[str, str] | None = None, device: Any = None,
                 dtype: Any = None, *, progress: bool = True, pipe: Any = None) -> None:
        super().__init__(model, overrides, device, dtype, progress=progress, pipe=pipe)
        self._rankers: dict[str, ClipRanker] = {}

    def load(self, name: str, overrides: Mapping[str, str]) -> Any:
        """A StableDiffusionPipeline from the resolver, with a DDIM scheduler."""
        from diffusers import StableDiffusionPipeline

        from refcoco_edit.models.components import sd_ddim_scheduler
        from refcoco_edit.models.resolver import load_pretrained

        def loader(src: str):
            # Loaded as saved, then cast: the dtype keyword changed name across diffusers versions.
            return StableDiffusionPipeline.from_pretrained(src, safety_checker=None, requires_safety_checker=False)

        pipe = load_pretrained(name, loader, overrides)
        pipe.scheduler = sd_ddim_scheduler(pipe.scheduler)
        if pipe.unet.config.in_channels != 4:
            raise InputError(
                f"model {name!r} has a {pipe.unet.config.in_channels}-channel UNet; Blended Latent Diffusion "
                "needs a text-to-image (4-channel) model such as sd15"
            )
        return pipe

    def _ranker(self, name: str) -> ClipRanker:
        if name not in self._rankers:
            self._rankers[name] = ClipRanker(name, self.overrides, self.device, self.dtype, progress=self.progress)
        return self._rankers[name]

    def generate(
        self,
        image: Any,
        mask: Any,
        *,
        text: str,
        num: int = 1,
        seed: int = 0,
        steps: int = DEFAULT_STEPS,
        size: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE,
        skip: float = DEFAULT_SKIP,
        negative_prompt: str = "",
        restore: bool = True,
        feather: int = DEFAULT_FEATHER,
        rank_by: str | None = None,
        _pipeline_name: str | None = None,
    ) -> list[Candidate]:
        """`num` candidates with seeds seed, seed+1, ...; ranked best first when `rank_by` names a
        CLIP model, else in seed order."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        if not text or not text.strip():
            raise InputError(f"{_pipeline_name or self.name} needs a text describing the edit")
        steps = check_steps(steps)
        first = skipped_steps(steps, skip)
        check_feather(feather)
        prep = prepare_inputs(image, mask, size=size)
        seeds = seeds_for(seed, num)
        pipe = self.pipe
        with torch.inference_mode():
            source = encode_source(pipe.vae, prep.work_image, self.device, self.dtype)
            m = latent_mask(prep.work_mask, self.device, self.dtype, pipe.vae_scale_factor)
            shape = (len(seeds), pipe.vae.config.latent_channels, source.shape[2], source.shape[3])
            noise = randn_tensor(shape, generator=cpu_generators(seeds), device=self.device, dtype=self.dtype)
            do_cfg = guidance_scale > 1.0
            cond, uncond = pipe.encode_prompt(
                text, self.device, len(seeds), do_cfg, negative_prompt or None
            )
            latents = blended_denoise(
                pipe.unet,
                pipe.scheduler,
                source_latents=source,
                mask=m,
                noise=noise,
                prompt_embeds=cond,
                negative_embeds=uncond,
                guidance_scale=guidance_scale,
                num_inference_steps=steps,
                skip_steps=first,
                progress=self.progress,
            )
            images = float_images_to_pil(decode_latents(pipe.vae, latents))
        record = self.record(
            prep, seeds, method="blended_latent_diffusion", pipeline=_pipeline_name,
            sent={"prompt": text, "negative_prompt": negative_prompt},
            steps=steps, guidance_scale=guidance_scale,
            sampling={"skip": float(skip), "skipped_steps": first},
            blending={"latent_mask": "max_pool", "blend_noise": "initial"},
            size=size, restore=restore, feather=feather,
        )
        out = self.finish(prep, images, seeds, record, restore=restore, feather=feather)
        if rank_by:
            out = rank_candidates(out, prep.mask, text, self._ranker(rank_by))
        return out
