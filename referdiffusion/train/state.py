"""What a training run holds between steps (`TrainState`), and building it from the config.

`load_pipeline` gives the starting model: an InstructPix2Pix / SD 1.5 checkpoint gets a fresh REM as
`referdiffusion init` makes it; a ReferDiffusion checkpoint is trained further as it is. `build_state`
then freezes the VAE and text encoder (in the mixed precision dtype, when one is set), sets the UNet and
the REM training, and makes the optimiser (one AdamW, the REM in its own parameter group), the
learning-rate schedule over all stages and the EMA copies, all registered with accelerate so that
`save_state` / `load_state` carry them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from refcoco_edit.errors import ModelNotAvailableError
from referdiffusion.train.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, ModelMixin, UNet2DConditionModel
    from diffusers.training_utils import EMAModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.rem import RegionEmbedder

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """The models, optimiser, schedule, EMA and step counter of a run, on this process."""

    config: TrainConfig
    accelerator: Accelerator
    unet: UNet2DConditionModel  # the trained modules themselves (saving, EMA)...
    rem: RegionEmbedder
    unet_wrapped: torch.nn.Module  # ...and as accelerate prepared them (DDP, autocast: the forward pass)
    rem_wrapped: torch.nn.Module | None  # None: the REM is not trained (plain InstructPix2Pix fine-tune)
    vae: AutoencoderKL
    text_encoder: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    noise_scheduler: DDPMScheduler
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]  # every trained parameter (gradient clipping)
    emas: dict[str, EMAModel]  # "unet" and, when it is trained, "rem"
    null_prompt: tuple[torch.Tensor, torch.Tensor]  # F_P and token mask of "" (text dropout)
    global_step: int = 0  # optimiser steps done

    @property
    def trains_rem(self) -> bool:
        return self.rem_wrapped is not None

    def module(self, name: str) -> ModelMixin:
        """The trained module an EMA entry averages."""
        return self.unet if name == "unet" else self.rem


def is_referdiffusion_checkpoint(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / "rem").is_dir()


def load_pipeline(config: TrainConfig) -> ReferDiffusionPipeline:
    """The `ReferDiffusionPipeline` the run starts from (weights as stored, float32, on the CPU)."""
    from referdiffusion.init import make_pipeline, model_name, resolve_source
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline

    m = config.model
    path = Path(m.pretrained).expanduser()
    if path.is_dir() and is_referdiffusion_checkpoint(path):
        if m.rem_kwargs:
            log.warning("model.rem_kwargs is ignored: %s already holds a REM", path)
        try:
            return ReferDiffusionPipeline.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ModelNotAvailableError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    try:
        return make_pipeline(resolve_source(m.pretrained), seed=m.rem_seed, rem_kwargs=m.rem_kwargs or None,
                             name=model_name(m.pretrained))
    except TypeError as exc:
        raise ConfigError(f"model.rem_kwargs: {exc}") from None


def token_length(config: TrainConfig, pipe: ReferDiffusionPipeline) -> int:
    """The prompts' token length (`data.max_token_length` or the tokenizer's), checked against the text
    encoder's positions."""
    max_length = config.data.max_token_length or pipe.tokenizer.model_max_length
    n_pos = getattr(pipe.text_encoder.config, "max_position_embeddings", max_length)
    if max_length > n_pos:
        raise ConfigError(f"data.max_token_length {max_length} exceeds the text encoder's {n_pos} positions")
    return max_length


def build_state(config: TrainConfig, accelerator: Accelerator, pipe: ReferDiffusionPipeline,
                max_length: int) -> TrainState:
    """The run's state at step 0 (see the module docstring); the order of the calls is the order of the
    random draws, which exact resume relies on."""
    import torch
    from diffusers import DDPMScheduler

    unet, rem, vae, text_encoder, tokenizer = pipe.unet, pipe.rem, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    device = accelerator.device
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    for frozen in (vae, text_encoder):
        frozen.to(device)
        if weight_dtype != torch.float32:
            frozen.to(dtype=weight_dtype)
        frozen.eval()
    use_rem = config.model.use_rem
    if config.model.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    rem.train(use_rem)
    rem.requires_grad_(use_rem)
    null_prompt = _null_prompt(tokenizer, text_encoder, max_length, device)

    optimizer, lr_scheduler = _optimiser(config, unet, rem if use_rem else None)
    if use_rem:
        unet_w, rem_w, optimizer = accelerator.prepare(unet, rem, optimizer)
        rem = accelerator.unwrap_model(rem_w)
    else:
        unet_w, optimizer = accelerator.prepare(unet, optimizer)
        rem_w = None
    unet = accelerator.unwrap_model(unet_w)
    trained = [unet] + ([rem] if use_rem else [])
    params = [p for m in trained for p in m.parameters() if p.requires_grad]
    accelerator.register_for_checkpointing(lr_scheduler)
    emas: dict[str, EMAModel] = {}
    if config.model.ema:
        from diffusers.training_utils import EMAModel

        for name, module in (("unet", unet), ("rem", rem)):
            if name == "rem" and not use_rem:
                continue
            ema = EMAModel(module.parameters(), decay=config.model.ema_decay, model_cls=type(module),
                           model_config=module.config)
            ema.to(device)
            accelerator.register_for_checkpointing(ema)
            emas[name] = ema
    return TrainState(config=config, accelerator=accelerator, unet=unet, rem=rem, unet_wrapped=unet_w,
                      rem_wrapped=rem_w, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                      noise_scheduler=noise_scheduler, optimizer=optimizer, lr_scheduler=lr_scheduler,
                      params=params, emas=emas, null_prompt=null_prompt)


def _null_prompt(tokenizer: PreTrainedTokenizerBase, text_encoder: PreTrainedModel, max_length: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """F_P and token mask of the empty prompt at the data's token length: what text dropout puts in."""
    import torch

    from referdiffusion.text import tokenize

    with torch.no_grad():
        tokens = tokenize(tokenizer, [""], max_length)
        use_mask = getattr(text_encoder.config, "use_attention_mask", False)
        mask = tokens["attention_mask"].to(device)
        embeds = text_encoder(tokens["input_ids"].to(device), attention_mask=mask if use_mask else None)[0]
    return embeds, mask


def _optimiser(config: TrainConfig, unet: UNet2DConditionModel, rem: RegionEmbedder | None
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the UNet and (when trained) the REM, and the learning-rate schedule over every stage."""
    import torch
    from diffusers.optimization import get_scheduler

    o = config.optim
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": o.learning_rate}]
    if rem is not None:
        groups.append({"params": list(rem.parameters()), "lr": o.rem_learning_rate or o.learning_rate})
    # foreach: torch picks it on CUDA only; on the CPU it is the same arithmetic (bit for bit) over fewer calls
    optimizer = torch.optim.AdamW(groups, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2),
                                  eps=o.adam_epsilon, weight_decay=o.weight_decay, foreach=True)
    lr_scheduler = get_scheduler(o.lr_scheduler, optimizer=optimizer, num_warmup_steps=o.lr_warmup_steps,
                                 num_training_steps=config.total_steps)
    return optimizer, lr_scheduler
