"""The rows' starting point: a ReferDiffusion checkpoint folder made of the study's own small models.

`referdiffusion train` starts from a folder (`model.pretrained`) that `ReferDiffusionPipeline.from_pretrained`
loads; a folder that already holds a REM is trained as it is. So every row of the study starts from the
same folder, written here once:

- VAE: `refshapes-vae` (`refcoco_edit/data/models/refshapes-vae` once trained, or any diffusers folder given),
  or, before it exists, a randomly initialised VAE of the same config (enough to exercise the trainer);
- text encoder and tokenizer: the frozen random CLIP of `text_encoder` (width 64, 32 tokens);
- UNet: InstructPix2Pix's 8-channel UNet of `unet.UNET_CONFIG`, weights drawn from `seed`;
- scheduler: Stable Diffusion's DDIM (the scaled-linear schedule of 1,000 steps);
- a random VAE's `scaling_factor` is measured (1 / std of the latent means of the images given), so the
  diffusion model sees unit-variance latents as with a trained one;
- REM: a `RegionEmbedder` at the text encoder's width with a conv stem sized to the 4 x 24 x 32 latents,
  weights drawn from `seed` (zero gate: before training its output equals the text features, so the
  fine-tune row, which never trains it, edits as its UNet alone).

    python -m referdiffusion.study.checkpoint --out DIR [--vae VAE_DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refcoco_edit.errors import InputError

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.study.vae import VAEConfig

log = logging.getLogger(__name__)

# The study's trained VAE, once it is in the repository.
SHIPPED_VAE = Path(__file__).resolve().parents[2] / "refcoco_edit" / "data" / "models" / "refshapes-vae"
REM_CONFIG: dict[str, Any] = {
    "num_attention_heads": 4,
    "mlp_ratio": 4.0,
    "image_hidden_channels": 64,
    "image_conv_layers": 2,
}
RANDOM = "random"  # `--vae random`: a random VAE even when refshapes-vae is shipped
RANDOM_VAE_SCALING = 1.0  # a random VAE's factor when no images are given to measure it
# Stable Diffusion's noise schedule (the scheduler configs of SD 1.5 and InstructPix2Pix)
NOISE_SCHEDULE: dict[str, Any] = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                  "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}


def load_vae(vae: Path | str | None, random_config: VAEConfig | None = None) -> tuple[AutoencoderKL, str]:
    """The VAE to use and where it came from: `vae` (a diffusers folder), else the shipped `refshapes-vae`,
    else a fresh random one; `vae="random"` or a `random_config` asks for a random one of that shape
    (default: `vae.VAEConfig`, refshapes-vae's)."""
    import torch
    from diffusers import AutoencoderKL

    from referdiffusion.study.vae import VAEConfig, build_vae

    if vae == RANDOM or random_config is not None:
        path = None
    else:
        path = Path(vae) if vae is not None else (SHIPPED_VAE if (SHIPPED_VAE / "config.json").is_file() else None)
    if path is not None:
        if not (path / "config.json").is_file():
            raise InputError(f"--vae {path}: not a diffusers AutoencoderKL folder (no config.json)")
        return AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32), str(path)
    cfg = random_config or VAEConfig()
    model = build_vae(cfg)
    model.register_to_config(scaling_factor=RANDOM_VAE_SCALING)
    return model, f"random (blocks {list(cfg.block_out_channels)}, seed {cfg.seed})"


def build_pipeline(vae: Path | str | None = None, seed: int = 0, *, unet_overrides: dict | None = None,
                   rem_overrides: dict | None = None, random_vae: VAEConfig | None = None,
                   scaling_images: torch.Tensor | None = None, rescale_vae: bool = False
                   ) -> tuple[ReferDiffusionPipeline, dict]:
    """The study's starting ReferDiffusionPipeline (float32, eval mode) and a note of what it holds.

    The overrides change the UNet's and the REM's arguments and the random VAE's shape (the micro study
    uses smaller ones); `scaling_images` (N x 3 x H x W in [-1, 1]) set a random VAE's scaling factor, and a
    given VAE's with `rescale_vae` (a VAE folder saved during training, before its factor was measured)."""
    import torch

    from refcoco_edit.models.components import sd_ddim_scheduler
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.rem import RegionEmbedder
    from referdiffusion.study.text_encoder import build_text_encoder, build_tokenizer
    from referdiffusion.study.unet import build_unet

    vae_model, vae_from = load_vae(vae, random_vae)
    vae_model = vae_model.float()
    if scaling_images is not None and (rescale_vae or vae_from.startswith("random")):
        with torch.no_grad():
            std = float(vae_model.encode(scaling_images.float()).latent_dist.mean.std())
        vae_model.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    text_encoder = build_text_encoder()
    tokenizer = build_tokenizer()
    unet = build_unet(seed, **(unet_overrides or {}))
    if vae_model.config.latent_channels * 2 != unet.config.in_channels:
        raise InputError(f"the VAE has {vae_model.config.latent_channels} latent channels; the study's UNet takes "
                         f"{unet.config.in_channels // 2}")
    torch.manual_seed(seed)
    rem_config = {**REM_CONFIG, **(rem_overrides or {})}
    rem = RegionEmbedder(text_dim=text_encoder.config.hidden_size, latent_channels=vae_model.config.latent_channels,
                         **rem_config)
    pipe = ReferDiffusionPipeline(vae=vae_model, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                  scheduler=sd_ddim_scheduler(NOISE_SCHEDULE), rem=rem)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.rem):
        module.eval()
    count = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
             for name in ("unet", "rem", "vae", "text_encoder")}
    note = {"vae": vae_from, "scaling_factor": float(vae_model.config.scaling_factor), "seed": seed,
            "parameters": count, "rem_config": rem_config,
            "unet_overrides": unet_overrides or {}}
    return pipe, note


def write_checkpoint(out: Path | str, vae: Path | str | None = None, seed: int = 0,
                     overwrite: bool = False, **overrides: Any) -> dict:
    """Write the starting checkpoint folder (all or nothing); what it holds."""
    from refcoco_edit.io import atomic_dir, atomic_write_json

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out} exists and is not empty (pass --overwrite to replace it)")
        if not (out / "model_index.json").is_file():
            raise InputError(f"{out} is not a checkpoint folder; refusing to replace it")
        import shutil

        shutil.rmtree(out)
    pipe, note = build_pipeline(vae, seed, **overrides)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / "study_base.json", note)
    return note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.checkpoint", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--vae", default=None,
                   help=f"a diffusers AutoencoderKL folder, or 'random' (default: {SHIPPED_VAE} when present, "
                        "else a random one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the UNet's and the REM's initial weights")
    p.add_argument("--data", type=Path, default=None,
                   help="RefShapes folder: 256 train images measure a random VAE's scaling factor")
    p.add_argument("--rescale-vae", action="store_true",
                   help="measure the given VAE's scaling factor on --data too (a VAE saved before it was measured)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    images = None
    if args.data is not None:
        from referdiffusion.study.data import RefShapesStudy, to_tensor

        images = to_tensor(RefShapesStudy(args.data).images("train", limit=256, seed=0))
    print(json.dumps(write_checkpoint(args.out, args.vae, args.seed, args.overwrite, scaling_images=images,
                                      rescale_vae=args.rescale_vae)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
