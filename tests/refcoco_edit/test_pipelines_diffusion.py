"""The diffusion pipelines against independent references, with the tiny models at 64x64, 2-4 steps.

- `blended_denoise` with a full mask and no skipped steps == diffusers' StableDiffusionPipeline;
- `blended_denoise` with a partial mask and skipped steps == a DDIM loop with blending written here;
- `region_edit` == diffusers' StableDiffusionInpaintPipeline on a 4-channel UNet (its latent-blending
  path) given the same source latent, mask, seeds and strength;
- `inpaint` with a 9-channel model == StableDiffusionInpaintPipeline, candidate by candidate;
- `composition` == PaintByExamplePipeline, candidate by candidate.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from refcoco_edit.errors import InputError

PROMPT = "a giraffe standing in the grass"
STEPS = 3
ATOL = 2e-4  # batched vs single forward passes differ by float rounding only (~1e-6)


def _image(w: int = 64, h: int = 64, seed: int = 0) -> Image.Image:
    """A smooth picture (gradients and a disc), closer to a photo than noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    r = 127 + 100 * np.sin(xx / (7 + seed))
    g = 127 + 100 * np.cos(yy / 9)
    b = np.where((xx - w * 0.6) ** 2 + (yy - h * 0.4) ** 2 < (min(w, h) / 5) ** 2, 230, 40) + rng.normal(0, 3, (h, w))
    return Image.fromarray(np.clip(np.dstack([r, g, b]), 0, 255).astype(np.uint8))


def _block_mask(w: int = 64, h: int = 64) -> np.ndarray:
    """Aligned to the 8x8 latent grid, so max-pooling (ours) and nearest (diffusers) agree."""
    m = np.zeros((h, w), np.uint8)
    m[16:40, 24:48] = 1
    return m


def _gens(*seeds: int):
    import torch

    return [torch.Generator().manual_seed(s) for s in seeds]


def _as_float(cands) -> np.ndarray:
    return np.stack([np.asarray(c.image, np.float32) / 255.0 for c in cands])


@pytest.fixture(scope="module")
def sd(tiny_cache):
    import diffusers

    from refcoco_edit.models import resolver as models

    pipe = models.load_pretrained("tiny-sd15", diffusers.StableDiffusionPipeline.from_pretrained)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def region(sd):
    from refcoco_edit.pipelines.region_edit import RegionEditPipeline

    return RegionEditPipeline("tiny-sd15", device="cpu", progress=False, pipe=sd)


def _source_latents(vae, image: Image.Image):
    import torch

    x = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1.0
    return vae.encode(x).latent_dist.mean * vae.config.scaling_factor


# --------------------------------------------------------------------------------------------
# region_edit: the blending core


def test_full_mask_core_equals_text_to_image(sd) -> None:
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from refcoco_edit.pipelines.region_edit import blended_denoise, decode_latents

    seeds = (11, 12)
    with torch.inference_mode():
        source = _source_latents(sd.vae, _image())
        cond, uncond = sd.encode_prompt(PROMPT, "cpu", len(seeds), True, None)
        noise = randn_tensor((2, 4, 8, 8), generator=_gens(*seeds), dtype=torch.float32)
        latents = blended_denoise(
            sd.unet, sd.scheduler, source_latents=source, mask=torch.ones(1, 1, 8, 8), noise=noise,
            prompt_embeds=cond, negative_embeds=uncond, guidance_scale=7.5, num_inference_steps=STEPS,
        )
        ours = decode_latents(sd.vae, latents)
    for i, seed in enumerate(seeds):
        ref = sd(PROMPT, height=64, width=64, num_inference_steps=STEPS, guidance_scale=7.5,
                 generator=_gens(seed)[0], output_type="np").images[0]
        np.testing.assert_allclose(ours[i], ref, atol=ATOL)


def _hand_written_bld(unet, alphas_cumprod, source, mask, noise, cond, uncond, steps, skip, scale):
    """DDIM (eta 0, 'leading' spacing, offset 1, final alpha = alphas_cumprod[0]) with classifier-free
    guidance and latent blending, from the formulas."""
    import torch

    ratio = 1000 // steps
    ts = [int(t) + 1 for t in (np.arange(steps) * ratio)[::-1]]
    ts = ts[skip:]

    def alpha(t: int) -> torch.Tensor:
        return alphas_cumprod[t] if t >= 0 else alphas_cumprod[0]

    def noised(t: int) -> torch.Tensor:
        return alpha(t).sqrt() * source + (1 - alpha(t)).sqrt() * noise

    x = noised(ts[0]) if skip else noise.clone()
    for i, t in enumerate(ts):
        eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        eps = eps_u + scale * (eps_c - eps_u)
        a_t, a_prev = alpha(t), alpha(t - ratio)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        background = noised(ts[i + 1]) if i + 1 < len(ts) else source
        x = mask * x + (1 - mask) * background
    return x


def test_core_blending_matches_hand_written_loop(sd) -> None:
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from refcoco_edit.pipelines.region_edit import blended_denoise, latent_mask

    steps, skip, scale = 4, 1, 5.0
    with torch.inference_mode():
        source = _source_latents(sd.vae, _image(seed=2))
        m = latent_mask(_block_mask(), "cpu", torch.float32)
        assert m.shape == (1, 1, 8, 8) and m.sum() == 9
        cond, uncond = sd.encode_prompt(PROMPT, "cpu", 2, True, None)
        noise = randn_tensor((2, 4, 8, 8), generator=_gens(3, 4), dtype=torch.float32)
        ours = blended_denoise(
            sd.unet, sd.scheduler, source_latents=source, mask=m, noise=noise, prompt_embeds=cond,
            negative_embeds=uncond, guidance_scale=scale, num_inference_steps=steps, skip_steps=skip,
        )
        alphas = sd.scheduler.alphas_cumprod
        ref = _hand_written_bld(sd.unet, alphas, source, m, noise, cond, uncond, steps, skip, scale)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-4)
    outside = (m == 0).expand_as(ours)
    assert torch.equal(ours[outside], source.expand_as(ours)[outside])  # the last blend is the clean source


def test_skipped_steps_rule() -> None:
    from refcoco_edit.pipelines.region_edit import skipped_steps

    assert skipped_steps(50, 0.25) == 13  # diffusers' strength 0.75: int(37.5) = 37 steps run
    assert skipped_steps(4, 0.25) == 1
    assert skipped_steps(10, 0.0) == 0
    with pytest.raises(InputError):
        skipped_steps(10, 1.0)
    with pytest.raises(InputError):
        skipped_steps(1, 0.5)


# --------------------------------------------------------------------------------------------
# region_edit: the public API


def test_region_edit_equals_diffusers_latent_blending(sd, region) -> None:
    """diffusers' inpaint pipeline on a 4-channel UNet blends latents the same way; given our source
    latent (VAE mean) as its image and the same seeds, the outputs agree."""
    import diffusers
    import torch

    image, mask = _image(seed=1), _block_mask()
    cands = region.generate(image, mask, text=PROMPT, num=2, seed=21, steps=4, skip=0.25, restore=False)
    inpaint4 = diffusers.StableDiffusionInpaintPipeline(**sd.components)
    inpaint4.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        source = _source_latents(sd.vae, image)
    ref = inpaint4(
        PROMPT, image=source, mask_image=Image.fromarray(mask * 255), masked_image_latents=source,
        height=64, width=64, strength=0.75, num_inference_steps=4, guidance_scale=7.5,
        num_images_per_prompt=2, generator=_gens(21, 22), output_type="np",
    ).images
    np.testing.assert_allclose(_as_float(cands), ref, atol=1 / 255 + 1e-6)
    assert [c.seed for c in cands] == [21, 22]
    assert cands[0].params["skipped_steps"] == 1 and cands[0].params["scheduler"] == "DDIMScheduler"


def test_region_edit_restore_and_edit_mask(region) -> None:
    from refcoco_edit.pipelines.base import dilate

    image, mask = _image(seed=3), _block_mask()
    raw = region.generate(image, mask, text=PROMPT, num=1, seed=5, steps=2, restore=False)[0]
    kept = region.generate(image, mask, text=PROMPT, num=1, seed=5, steps=2, feather=4)[0]
    src, out = np.asarray(image), np.asarray(kept.image)
    far = dilate(mask, 5) == 0
    np.testing.assert_array_equal(out[far], src[far])
    np.testing.assert_array_equal(out[mask == 1], np.asarray(raw.image)[mask == 1])
    assert (out != src).any(axis=2).sum() > 0.5 * mask.sum()  # the region really changed
    for cand in (raw, kept):
        assert cand.edit_mask.shape == mask.shape and cand.edit_mask.dtype == np.uint8
        assert cand.edit_mask.any()
        assert not cand.edit_mask[dilate(mask, cand.params["feather"] + 8) == 0].any()


def test_region_edit_sizes_modes_and_determinism(region) -> None:
    odd = _image(61, 45, seed=4).convert("RGBA")
    mask = np.zeros((45, 61), np.uint8)
    mask[10:30, 20:40] = 1
    a = region.generate(odd, mask, text=PROMPT, num=2, seed=9, steps=2)
    b = region.generate(odd, mask, text=PROMPT, num=2, seed=9, steps=2)
    for x, y in zip(a, b):
        assert x.image.size == (61, 45) and x.image.mode == "RGB"
        assert x.params["work_size"] == [64, 48] and x.params["source_size"] == [61, 45]
        assert x.image.tobytes() == y.image.tobytes()
        np.testing.assert_array_equal(x.edit_mask, y.edit_mask)
    assert a[0].image.tobytes() != a[1].image.tobytes()
    shrunk = region.generate(_image(128, 96), _block_mask(128, 96), text=PROMPT, steps=2, size=64)[0]
    assert shrunk.params["work_size"] == [64, 48] and shrunk.image.size == (128, 96)


def test_region_edit_refuses_bad_requests(region) -> None:
    image = _image()
    with pytest.raises(InputError, match="empty"):
        region.generate(image, np.zeros((64, 64), np.uint8), text=PROMPT, steps=2)
    with pytest.raises(InputError, match="whole image"):
        region.generate(image, np.ones((64, 64), np.uint8), text=PROMPT, steps=2)
    with pytest.raises(InputError, match="text"):
        region.generate(image, _block_mask(), text=" ", steps=2)
    with pytest.raises(InputError):
        region.generate(image, _block_mask(), text=PROMPT, steps=0)


def test_region_edit_clip_ranking(region, tiny_cache) -> None:
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    from refcoco_edit.models import resolver as models
    from refcoco_edit.pipelines.region_edit import region_crop

    image, mask = _image(seed=6), _block_mask()
    ranked = region.generate(image, mask, text=PROMPT, num=3, seed=30, steps=2, rank_by="tiny-clip")
    scores = [c.score for c in ranked]
    assert scores == sorted(scores, reverse=True) and sorted(c.seed for c in ranked) == [30, 31, 32]
    # an independent score: CLIP's own preprocessing written out (resize 32, centre crop, normalise)
    src = models.resolve("tiny-clip").source
    clip, tok = CLIPModel.from_pretrained(src).eval(), CLIPTokenizer.from_pretrained(src)
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    crop = region_crop(ranked[0].image, mask).resize((32, 32), Image.Resampling.BICUBIC)
    pixels = torch.tensor(((np.asarray(crop) / 255.0 - mean) / std).transpose(2, 0, 1)[None], dtype=torch.float32)
    with torch.inference_mode():
        img = clip.get_image_features(pixel_values=pixels)
        txt = clip.get_text_features(**tok([PROMPT], return_tensors="pt"))
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        want = 100 * torch.nn.functional.cosine_similarity(img, txt).item()
    assert ranked[0].score == pytest.approx(want, abs=0.5)


# --------------------------------------------------------------------------------------------
# inpaint


def test_inpaint_9_channel_equals_diffusers(tiny_cache) -> None:
    import diffusers

    from refcoco_edit.models import resolver as models
    from refcoco_edit.pipelines import get_pipeline

    pipe = get_pipeline("inpaint", "tiny-sd-inpaint", device="cpu", progress=False)
    assert pipe.method == "sd_inpainting"
    image, mask = _image(seed=7), _block_mask()
    cands = pipe.generate(image, mask, num=2, seed=40, steps=STEPS, restore=False)
    assert [c.params["prompt"] for c in cands] == ["background"] * 2
    ref_pipe = models.load_pretrained("tiny-sd-inpaint", diffusers.StableDiffusionInpaintPipeline.from_pretrained)
    ref_pipe.set_progress_bar_config(disable=True)
    for cand, seed in zip(cands, (40, 41)):
        ref = ref_pipe("background", image=image, mask_image=Image.fromarray(mask * 255), height=64, width=64,
                       num_inference_steps=STEPS, guidance_scale=7.5, generator=_gens(seed)[0],
                       output_type="np").images[0]
        np.testing.assert_allclose(np.asarray(cand.image, np.float32) / 255, ref, atol=1 / 255 + 1e-6)
        assert cand.edit_mask.any()


def test_inpaint_with_text_to_image_model_blends(sd) -> None:
    from refcoco_edit.pipelines.inpaint import InpaintPipeline
    from refcoco_edit.pipelines.region_edit import RegionEditPipeline

    pipe = InpaintPipeline("tiny-sd15", device="cpu", progress=False, components=sd.components)
    assert pipe.method == "blended_latent_diffusion"
    image, mask = _image(seed=8), _block_mask()
    cand = pipe.generate(image, mask, seed=2, steps=2, text="grass")[0]
    assert cand.params["pipeline"] == "inpaint" and cand.params["skip"] == 0.0 and cand.params["prompt"] == "grass"
    direct = RegionEditPipeline("tiny-sd15", device="cpu", progress=False, pipe=sd)
    same = direct.generate(image, mask, text="grass", seed=2, steps=2, skip=0.0)[0]
    assert cand.image.tobytes() == same.image.tobytes()
    with pytest.raises(InputError):
        InpaintPipeline("tiny-sd15", device="cpu", progress=False, components={**sd.components}).generate(
            image, np.ones((64, 64), np.uint8))


# --------------------------------------------------------------------------------------------
# composition


def test_composition_equals_paint_by_example(tiny_cache) -> None:
    from refcoco_edit.models import resolver as models
    from refcoco_edit.models.pbe_loading import load_paint_by_example
    from refcoco_edit.pipelines import get_pipeline
    from refcoco_edit.pipelines.composition import crop_object

    pipe = get_pipeline("composition", "tiny-paint-by-example", device="cpu", progress=False)
    image, mask = _image(seed=9), _block_mask()
    other = np.zeros((64, 64), np.uint8)
    other[40:60, 4:20] = 1
    example = crop_object(_image(seed=10), other)
    assert example.size == (24, 24)  # 16x20 box, 10% padding each side (20 * 1.2), squared
    cands = pipe.generate(image, mask, example=example, num=2, seed=50, steps=STEPS, restore=False)
    ref_pipe = models.load_pretrained("tiny-paint-by-example", load_paint_by_example)
    ref_pipe.set_progress_bar_config(disable=True)
    for cand, seed in zip(cands, (50, 51)):
        ref = ref_pipe(example_image=example, image=image, mask_image=Image.fromarray(mask * 255),
                       num_inference_steps=STEPS, guidance_scale=5.0, generator=_gens(seed)[0],
                       output_type="np").images[0]
        np.testing.assert_allclose(np.asarray(cand.image, np.float32) / 255, ref, atol=1 / 255 + 1e-6)
    with pytest.raises(InputError):
        pipe.generate(image, mask, example=None)


def test_crop_object_fills_and_pads() -> None:
    from refcoco_edit.pipelines.composition import crop_object

    img = np.full((20, 30, 3), 50, np.uint8)
    m = np.zeros((20, 30), np.uint8)
    m[0:4, 26:30] = 1  # a corner object: the square box reaches out of the image
    crop = np.asarray(crop_object(img, m, pad=0.5))
    assert crop.shape == (8, 8, 3)
    assert (crop[2:6, 2:6] == 50).all()  # the object
    assert (crop[0:2] == 255).all() and (crop[:, 6:] == 255).all()  # outside the image: fill
    with pytest.raises(InputError):
        crop_object(img, np.zeros((20, 30), np.uint8))
