"""Make a ReferDiffusion checkpoint from an InstructPix2Pix or a Stable Diffusion 1.5 one.

- UNet: an InstructPix2Pix 8-channel UNet is kept unchanged; a 4-channel Stable Diffusion UNet gets its
  first convolution widened to 8 input channels, the new (source-latent) channels zero, as InstructPix2Pix
  was made, so it starts out ignoring the source image.
- VAE, text encoder, tokenizer: copied.
- Scheduler: DDIM with the source's noise schedule (InstructPix2Pix ships Euler-ancestral; the
  checkpoint carries DDIM so that inference defaults to it).
- REM: a fresh `RegionEmbedder` at the text encoder's width (zero gate: outputs equal the source's).
- No safety checker or feature extractor.
- One dtype for every component, float32 unless asked otherwise: a source saved partly in float16 (a
  text encoder whose config says `torch_dtype: float16` loads in float16 under transformers 5, the
  UNet in float32 under diffusers) would otherwise be written mixed, and fail at the first step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refcoco_edit.errors import InputError, ModelNotAvailableError

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline

logger = logging.getLogger(__name__)

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class InitReport:
    out: Path
    source: str
    source_kind: str  # "instruct-pix2pix" | "stable-diffusion"
    widened_conv_in: bool
    rem_parameters: int


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Give `unet` a first convolution with `in_channels` inputs: the old weights for the first channels,
    zeros for the new ones; the config is updated so that save/load keeps the new width."""
    import torch

    old = unet.conv_in
    if old.in_channels > in_channels:
        raise InputError(f"the UNet already has {old.in_channels} input channels (> {in_channels})")
    new = torch.nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
        dtype=old.weight.dtype, device=old.weight.device,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def ddim_scheduler(source_config: dict[str, Any]) -> DDIMScheduler:
    """Stable Diffusion's DDIM from a source scheduler's config: its noise schedule and prediction type
    kept, `clip_sample=False` (`refcoco_edit.models.components.sd_ddim_scheduler`)."""
    from refcoco_edit.models.components import sd_ddim_scheduler

    return sd_ddim_scheduler(source_config)


def resolve_source(name_or_dir: str) -> str:
    """A local folder as given, else a model name of `refcoco_edit.models.resolver` resolved to a folder or Hub id."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return str(path.resolve())
    from refcoco_edit.models.resolver import MODEL_SPECS, resolve

    if name_or_dir not in MODEL_SPECS:
        raise InputError(
            f"--from {name_or_dir!r} is neither a folder nor a model name; names: {', '.join(MODEL_SPECS)}"
        )
    return resolve(name_or_dir).source


def model_name(name_or_dir: str) -> str | None:
    """The resolver name that `name_or_dir` stands for, None when it is a folder (folders win, as in
    `resolve_source`)."""
    from refcoco_edit.models.resolver import MODEL_SPECS

    if Path(name_or_dir).expanduser().is_dir() or name_or_dir not in MODEL_SPECS:
        return None
    return name_or_dir


def _load_parts(source: str) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    def sub(cls: Any, folder: str) -> Any:
        return cls.from_pretrained(source, subfolder=folder)

    return {
        "unet": sub(UNet2DConditionModel, "unet"),
        "vae": sub(AutoencoderKL, "vae"),
        "text_encoder": sub(CLIPTextModel, "text_encoder"),
        "tokenizer": sub(CLIPTokenizer, "tokenizer"),
        "scheduler": ddim_scheduler(DDIMScheduler.load_config(source, subfolder="scheduler")),
    }


def _load(source: str, name: str | None = None) -> dict[str, Any]:
    """The components of `source`; a model `name` loads through the resolver, so that a missing model's
    error names the setting to set (and HF_HUB_OFFLINE fails fast)."""
    if name is not None:
        from refcoco_edit.models.resolver import load_pretrained

        return load_pretrained(name, _load_parts)
    try:
        return _load_parts(source)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(
            f"cannot load a Stable Diffusion / InstructPix2Pix checkpoint from {source}: {type(exc).__name__}: {exc}"
        ) from exc


def make_pipeline(source: str, seed: int = 0, rem_kwargs: dict[str, Any] | None = None, *,
                  name: str | None = None, dtype: Any = "float32") -> ReferDiffusionPipeline:
    """An in-memory `ReferDiffusionPipeline` initialised from `source` (a folder or Hub id), or from the
    resolver's model `name` (then `source` is only reported), every component in `dtype`."""
    return _build(source, seed, rem_kwargs, name, dtype)[0]


def _build(source: str, seed: int, rem_kwargs: dict[str, Any] | None,
           name: str | None = None, dtype: Any = "float32") -> tuple[ReferDiffusionPipeline, str]:
    import torch

    from refcoco_edit.models.components import place_components
    from refcoco_edit.pipelines.base import resolve_dtype
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.rem import RegionEmbedder

    parts = _load(source, name)
    unet = parts["unet"]
    in_ch = unet.config.in_channels
    latent_ch = parts["vae"].config.latent_channels
    if in_ch == latent_ch:
        widen_conv_in(unet, 2 * latent_ch)
    elif in_ch != 2 * latent_ch:
        raise InputError(
            f"{source}: UNet with {in_ch} input channels is neither Stable Diffusion ({latent_ch}) nor "
            f"InstructPix2Pix ({2 * latent_ch})"
        )
    text_dim = parts["text_encoder"].config.hidden_size
    kwargs = {"text_dim": text_dim, "latent_channels": latent_ch, **(rem_kwargs or {})}
    if "num_attention_heads" not in kwargs:
        kwargs["num_attention_heads"] = next(h for h in (8, 4, 2, 1) if text_dim % h == 0)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        rem = RegionEmbedder(**kwargs)
    finally:
        torch.random.set_rng_state(generator_state)
    pipe = ReferDiffusionPipeline(rem=rem, **parts)
    place_components(pipe, unet.device, resolve_dtype(unet.device, dtype))
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.rem):
        module.eval()
    return pipe, "stable-diffusion" if in_ch == latent_ch else "instruct-pix2pix"


def init_checkpoint(
    name_or_dir: str,
    out: Path | str,
    *,
    seed: int = 0,
    overwrite: bool = False,
    rem_kwargs: dict[str, Any] | None = None,
    dtype: Any = "float32",
    progress: bool = True,
) -> InitReport:
    """Write a ReferDiffusion checkpoint folder at `out` (unet, vae, text_encoder, tokenizer, scheduler,
    rem, model_index.json) from an InstructPix2Pix or Stable Diffusion 1.5 checkpoint, every component
    in `dtype` (float32 by default: what training starts from). `progress`: the libraries' bars."""
    from refcoco_edit.models.components import quiet_libraries

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty (pass --overwrite to replace its files)")
    source = resolve_source(name_or_dir)
    with quiet_libraries(not progress):
        pipe, kind = _build(source, seed, rem_kwargs, model_name(name_or_dir), dtype)
        out.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(out)
    n_rem = sum(p.numel() for p in pipe.rem.parameters())
    logger.info("wrote ReferDiffusion checkpoint %s from %s (%s), REM %d parameters", out, source, kind, n_rem)
    return InitReport(out=out, source=source, source_kind=kind, widened_conv_in=kind == "stable-diffusion",
                      rem_parameters=n_rem)
