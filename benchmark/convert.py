"""Single-file LDM checkpoints (MagicBrush, InstructDiffusion releases) to diffusers folders.

The official MagicBrush and InstructDiffusion weights are released as one `.ckpt` (or `.safetensors`)
in the layout of the original latent-diffusion code (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`), with an InstructPix2Pix-style UNet: 8 input channels, the noisy
latent and the source image's latent. The methods here load diffusers folders, so `rie-bench convert
--from ldm CKPT --out DIR` converts once:

- the key mapping is diffusers' own single-file conversion
  (`StableDiffusionInstructPix2PixPipeline.from_single_file`), given a diffusers-format config folder so
  that nothing is fetched from the network;
- that folder is written from `SD15_IP2P`, the Stable Diffusion 1.5 architecture with an 8-channel UNet,
  kept in this module (`--config DIR` uses another diffusers-format folder instead: a different
  architecture, or the tiny one of the tests);
- the tokenizer is OpenAI CLIP's, built from the BPE vocabulary the toolkit already uses
  (`refcoco_edit.models.tiny.build_clip_tokenizer`), or read from `--tokenizer DIR`;
- when the checkpoint holds EMA weights (`model_ema.*`, as InstructPix2Pix-style training saves them)
  the UNet gets those, which the original editing scripts sample with (`--no-ema`: the raw weights);
- every component is written in one dtype (`--dtype`, float32 by default), the scheduler is
  InstructPix2Pix's Euler ancestral, and there is no safety checker.

`.ckpt` files are read with `torch.load(weights_only=True)`: a checkpoint that pickles more than tensors
(a full training state with arbitrary Python objects) is refused rather than unpickled; re-save its
`state_dict` as safetensors where the file is trusted.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refcoco_edit.errors import InputError, ModelNotAvailableError

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"  # the LDM UNet's first convolution
EMA_PREFIX = "model_ema."

# Stable Diffusion 1.5's architecture with InstructPix2Pix's 8-channel UNet, as diffusers configs.
SD_SCHEDULE: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                               "num_train_timesteps": 1000}
SD15_IP2P: dict[str, dict[str, Any]] = {
    "model_index.json": {
        "_class_name": "StableDiffusionInstructPix2PixPipeline",
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
    },
    "unet/config.json": {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 64,
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 768,
        "norm_num_groups": 32,
        "norm_eps": 1e-05,
        "act_fn": "silu",
        "center_input_sample": False,
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "mid_block_scale_factor": 1,
    },
    "vae/config.json": {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    "text_encoder/config.json": {  # CLIP ViT-L/14's text tower
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-05,
        "projection_dim": 768,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    },
    "scheduler/scheduler_config.json": {
        "_class_name": "EulerAncestralDiscreteScheduler",
        **SD_SCHEDULE,
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "timestep_spacing": "leading",
    },
}


@dataclass(frozen=True)
class ConvertReport:
    out: Path
    checkpoint: Path
    config: str  # "sd15-ip2p" (the built-in architecture) or the folder given
    ema: bool  # the UNet got the checkpoint's EMA weights
    dtype: str
    parameters: dict[str, int]


def write_architecture(folder: Path, configs: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the diffusers-format config folder (`SD15_IP2P` by default) that the conversion reads."""
    for rel, data in (configs or SD15_IP2P).items():
        path = Path(folder) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return Path(folder)


def checkpoint_facts(path: Path) -> tuple[tuple[int, ...] | None, int]:
    """(shape of the UNet's first convolution or None, number of EMA tensors), read without loading the
    weights where the format allows (safetensors header; a zip `.ckpt` memory-mapped)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            shape = tuple(f.get_slice(UNET_IN).get_shape()) if UNET_IN in keys else None
        return shape, sum(k.startswith(EMA_PREFIX) for k in keys)
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip archive: no memory map
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    while isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a state dict")
    shape = tuple(data[UNET_IN].shape) if UNET_IN in data else None
    return shape, sum(str(k).startswith(EMA_PREFIX) for k in data)


def _check_checkpoint(path: Path) -> int:
    """The number of EMA tensors; InputError naming the problem for anything but an 8-channel LDM UNet."""
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise InputError(f"{path}: expected a single-file checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    try:
        shape, n_ema = checkpoint_facts(path)
    except InputError:
        raise
    except Exception as exc:  # unpickling refusals, corrupt files: say which file and why
        raise InputError(
            f"{path} cannot be read as a weights-only checkpoint ({type(exc).__name__}: {str(exc)[:300]}); "
            "if it is a full training state, re-save its state_dict as .safetensors where the file is trusted"
        ) from exc
    if shape is None:
        raise InputError(f"{path} is not an LDM checkpoint: no {UNET_IN}")
    if len(shape) != 4 or shape[1] != 8:
        raise InputError(
            f"{path}: the UNet takes {shape[1] if len(shape) > 1 else '?'} input channels; the converter is for "
            "InstructPix2Pix-style checkpoints (8: the noisy latent and the source latent)"
        )
    return n_ema


def convert_ldm(
    checkpoint: str | Path,
    out: str | Path,
    *,
    config: str | Path | None = None,
    tokenizer: str | Path | None = None,
    ema: bool = True,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = False,
) -> ConvertReport:
    """Convert an InstructPix2Pix-style single-file LDM checkpoint into a diffusers folder at `out`
    (see the module docstring). `config`: a diffusers-format folder with the architecture (default: the
    built-in SD 1.5 one); `tokenizer`: a folder holding a CLIP tokenizer (default: OpenAI CLIP's)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from transformers import CLIPTokenizer

    from refcoco_edit.io import atomic_dir
    from refcoco_edit.models.components import place_components, quiet_libraries
    from refcoco_edit.models.tiny import build_clip_tokenizer
    from refcoco_edit.pipelines.base import dtype_name, resolve_dtype

    checkpoint, out = Path(checkpoint).expanduser().resolve(), Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InputError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    n_ema = _check_checkpoint(checkpoint)
    use_ema = ema and n_ema > 100  # diffusers' own rule for "this checkpoint has EMA weights"
    torch_dtype = resolve_dtype("cpu", dtype)
    if config is not None and not (Path(config) / "model_index.json").is_file():
        raise InputError(f"--config {config} is not a diffusers-format folder (no model_index.json)")
    with quiet_libraries(not progress), tempfile.TemporaryDirectory(prefix="rie-convert-") as tmp:
        folder = Path(config).resolve() if config is not None else write_architecture(Path(tmp) / "sd15-ip2p")
        try:
            tok = CLIPTokenizer.from_pretrained(str(tokenizer)) if tokenizer else build_clip_tokenizer()
        except OSError as exc:
            raise ModelNotAvailableError(f"no CLIP tokenizer in {tokenizer}: {exc}") from exc
        try:
            pipe = StableDiffusionInstructPix2PixPipeline.from_single_file(
                str(checkpoint), config=str(folder), tokenizer=tok, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False, local_files_only=True, extract_ema=use_ema,
            )
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise InputError(f"{checkpoint} does not convert with the architecture of {config or 'SD 1.5'}: "
                             f"{type(exc).__name__}: {str(exc)[:500]}") from exc
        place_components(pipe, "cpu", torch_dtype)
        if out.exists() and overwrite:
            import shutil

            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(out) as target:
            pipe.save_pretrained(target)
    parameters = {name: sum(p.numel() for p in module.parameters())
                  for name, module in (("unet", pipe.unet), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder))}
    logger.info("converted %s -> %s (EMA: %s, %s)", checkpoint, out, use_ema, dtype_name(torch_dtype))
    return ConvertReport(out=out, checkpoint=checkpoint, config=str(config) if config else "sd15-ip2p",
                         ema=use_ema, dtype=dtype_name(torch_dtype), parameters=parameters)
