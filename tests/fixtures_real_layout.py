"""Tiny models saved the way the real Hub repositories are, for regression tests of loading and running.

The built-in `tiny-*` folders are written by today's `save_pretrained`: every component in float32, a
DDIM scheduler, no safety checker. Users' folders look different, and each difference once broke a
pipeline or method:

- components saved in float16 (`.to(torch.float16)` then `save_pretrained`: the config says
  `torch_dtype`/`dtype` float16); transformers 5 loads such a text or image encoder in float16 while
  diffusers loads its own models in float32;
- the scheduler the repository ships: PNDM (stable-diffusion-v1-5, Paint-by-Example; no `clip_sample`
  key) or Euler ancestral (instruct-pix2pix);
- configs written by old library versions: transformers 4's `torch_dtype` key instead of `dtype`, an
  old `_diffusers_version` and without the keys later versions added;
- `safety_checker` and `feature_extractor` entries in `model_index.json`, with their folders.

`save_real_layout(name, out, ...)` writes the tiny model `name` (`tiny-sd15`, `tiny-ip2p`,
`tiny-sd-inpaint`, `tiny-paint-by-example`) like that. `save_reference(name, out, fp16=...)` writes the
same weights, rounded through float16 where the real layout stores float16, all in float32 with Stable
Diffusion's DDIM: what a correct loader of the real layout must compute, so that tests compare outputs
and not only "it did not crash".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEDULERS = ("pndm", "euler_ancestral", "ddim")
# The noise schedule every Stable Diffusion 1.x repository ships.
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}

# Keys that UNet2DConditionModel / AutoencoderKL configs gained after the first SD 1.x releases (their
# defaults are what the tiny models use, so an old config loads the same model).
_NEW_UNET_KEYS = (
    "addition_embed_type", "addition_embed_type_num_heads", "addition_time_embed_dim", "attention_type",
    "class_embeddings_concat", "conv_in_kernel", "conv_out_kernel", "cross_attention_norm", "encoder_hid_dim",
    "encoder_hid_dim_type", "mid_block_only_cross_attention", "mid_block_type", "num_attention_heads",
    "num_class_embeds", "only_cross_attention", "projection_class_embeddings_input_dim", "resnet_out_scale_factor",
    "resnet_skip_time_act", "resnet_time_scale_shift", "reverse_transformer_layers_per_block", "time_cond_proj_dim",
    "time_embedding_act_fn", "time_embedding_dim", "time_embedding_type", "timestep_post_act",
    "transformer_layers_per_block", "upcast_attention", "use_linear_projection", "dual_cross_attention",
    "class_embed_type",
)
_NEW_VAE_KEYS = ("force_upcast", "latents_mean", "latents_std", "shift_factor", "use_quant_conv",
                 "use_post_quant_conv", "mid_block_add_attention", "scaling_factor")
# Default: as a user finds them after `.to(torch.float16)` of the encoders and the VAE.
DEFAULT_FP16 = ("text_encoder", "vae", "image_encoder")


def make_scheduler(kind: str) -> Any:
    """The scheduler a real repository ships, with Stable Diffusion's schedule: `pndm` (SD 1.5,
    Paint-by-Example), `euler_ancestral` (InstructPix2Pix) or `ddim` (SD's settings)."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, PNDMScheduler

    if kind == "pndm":
        return PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    if kind == "euler_ancestral":
        return EulerAncestralDiscreteScheduler(**SD_SCHEDULE, steps_offset=1)
    if kind == "ddim":
        return DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {kind!r}")


def _tiny(name: str, fp16: Iterable[str], *, round_only: bool) -> Any:
    """The tiny pipeline `name`; components in `fp16` cast to float16 (or, with `round_only`, rounded
    through float16 and kept in float32)."""
    import torch

    from refcoco_edit.models.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline(name)
    for part in fp16:
        module = getattr(pipe, part, None)
        if isinstance(module, torch.nn.Module):
            module.to(torch.float16)
            if round_only:
                module.to(torch.float32)
    return pipe


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _old_transformers_config(data: dict) -> None:
    """transformers 4 wrote `torch_dtype`; 5 writes `dtype`."""
    if "dtype" in data:
        data["torch_dtype"] = data.pop("dtype")
    data["transformers_version"] = "4.19.0.dev0"
    for sub in ("text_config", "vision_config"):
        if isinstance(data.get(sub), dict) and "dtype" in data[sub]:
            data[sub]["torch_dtype"] = data[sub].pop("dtype")


def _old_diffusers_config(keys: tuple[str, ...]):
    def change(data: dict) -> None:
        data["_diffusers_version"] = "0.6.0"
        for key in keys:
            data.pop(key, None)

    return change


def _safety_parts(out: Path) -> None:
    """A tiny `StableDiffusionSafetyChecker` and a CLIP image processor where the repositories keep them."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    from refcoco_edit.models import tiny

    config = CLIPConfig(text_config=tiny._text_config().to_dict(), vision_config=tiny._vision_config().to_dict(),
                        projection_dim=tiny.PROJECTION_DIM)
    StableDiffusionSafetyChecker(config).save_pretrained(out / "safety_checker")
    tiny._image_processor().save_pretrained(out / "feature_extractor")


def save_real_layout(name: str, out: Path, *, fp16: Iterable[str] = DEFAULT_FP16, scheduler: str = "pndm",
                     safety_checker: bool = True, old_configs: bool = True) -> Path:
    """Write the tiny model `name` laid out like its real repository (see the module docstring)."""
    out = _save_tiny(name, out, fp16, scheduler, round_only=False)
    if old_configs:
        for sub in ("text_encoder", "image_encoder"):
            if (out / sub / "config.json").is_file():
                _edit_json(out / sub / "config.json", _old_transformers_config)
        if (out / "unet" / "config.json").is_file():
            _edit_json(out / "unet" / "config.json", _old_diffusers_config(_NEW_UNET_KEYS))
        if (out / "vae" / "config.json").is_file():
            _edit_json(out / "vae" / "config.json", _old_diffusers_config(_NEW_VAE_KEYS))
    if safety_checker:
        from refcoco_edit.models.tiny import _build_quietly

        _build_quietly(_safety_parts, out)

        def entries(index: dict) -> None:
            index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
            index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
            if "requires_safety_checker" in index:
                index["requires_safety_checker"] = True
            index["_diffusers_version"] = "0.6.0"
            for key in [k for k, v in index.items() if v == [None, None]]:  # today's writer adds these
                del index[key]

        _edit_json(out / "model_index.json", entries)
    return out


def save_reference(name: str, out: Path, *, fp16: Iterable[str] = DEFAULT_FP16, scheduler: str = "ddim") -> Path:
    """The same weights as `save_real_layout(name, fp16=fp16)`, all in float32 (float16-rounded where that
    one stores float16), with Stable Diffusion's DDIM (or `scheduler`), in today's layout."""
    return _save_tiny(name, out, fp16, scheduler, round_only=True)


def _save_tiny(name: str, out: Path, fp16: Iterable[str], scheduler: str, *, round_only: bool) -> Path:
    """Save the tiny model `name` with its `fp16` parts in float16 (`round_only`: float16-rounded but
    stored in float32) and the named scheduler."""
    from refcoco_edit.models.pbe_loading import fix_model_index
    from refcoco_edit.models.tiny import _build_quietly

    out = Path(out)

    def build(folder: Path) -> None:
        pipe = _tiny(name, fp16, round_only=round_only)
        pipe.scheduler = make_scheduler(scheduler)
        pipe.save_pretrained(folder)
        if name == "tiny-paint-by-example":
            fix_model_index(folder)

    _build_quietly(build, out)
    return out


def saved_dtypes(folder: Path) -> dict[str, set[str]]:
    """component -> the dtypes of the tensors in its saved safetensors files (read without loading models)."""
    from safetensors import safe_open

    found: dict[str, set[str]] = {}
    for path in sorted(Path(folder).glob("*/*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (not a dict)
        found.setdefault(path.parent.name, set()).update(dtypes)
    return found
