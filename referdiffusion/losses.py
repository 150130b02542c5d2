"""ReferDiffusion's training losses, one function per term and `compute_losses` for a training step.

L = w_noise L_noise + w_mask L_mask + w_edit L_edit + w_rcl L_rcl; a weight of 0 switches a term off (it
is then not computed, and its inputs need not be in the batch). The plain InstructPix2Pix fine-tune of the
paper's ablation is `compute_losses(..., rem=None, config=LossConfig(mask_weight=0, edit_weight=0,
rcl_weight=0))`.

- L_noise: MSE between the UNet output and its target (the noise for epsilon prediction, the velocity for
  v-prediction, the clean latent for sample prediction), as InstructPix2Pix trains.
- L_mask: BCE + Dice between the REM's mask logits M^ (latent resolution) and the source mask M. M is
  brought to latent resolution by area averaging (`adaptive_avg_pool2d`): each latent cell's target is the
  fraction of its pixels inside the object, a soft target. Thresholding at 0.5 would erase objects thinner
  than a latent cell (8 pixels); BCE and Dice both take soft targets. Dice per sample:
  1 - (2 sum(p t) + s) / (sum p + sum t + s), p = sigmoid(M^), s = `dice_smooth` (1 by default, so an
  empty mask predicted empty scores 0); averaged over samples. BCE: mean over positions and samples.
  The minimiser of that loss is each cell's coverage, and the pipeline's mask (the logits upsampled
  bilinearly to the image, thresholded at probability 0.5) loses cells covered less than half: on objects
  a few cells wide (RefShapes at 64 px) the exact coverage scores a mask IoU of 0.47 on val, while logits
  fitted to the objects reach 0.85 (`referdiffusion.study.rem_ceiling`). `mask_resolution="image"`
  compares what the pipeline shows instead: the logits upsampled as the pipeline does (bilinear) against
  M at the batch's image size, BCE + Dice there.
- L_edit: 1 - cos(e_e, mean of F_P over the tokens of the edit text P_e), the target detached (F_P is the
  text encoder's output for the whole prompt, so the P_e tokens carry their context). Token positions come
  from the prompt's character spans (`referdiffusion.text.spans_to_token_mask`). Samples whose P_e has no
  token (empty span, or truncated away) are left out.
- L_rcl, Region-Control Loss: mean L1 between the model's denoised estimate z0^ and the stop-gradient
  source latent, over latent positions outside the edit mask M_e. The paper writes the loss on z_t, but
  z_t is the noisy *input* of the UNet, fixed by the data and the noise, with no gradient to the model; the
  term only makes sense on the model's output, whose clean-latent reading is
  z0^ = (z_t - sqrt(1 - a_t) eps^) / sqrt(a_t) (epsilon prediction; sqrt(a_t) z_t - sqrt(1 - a_t) v^ for
  v-prediction; the output itself for sample prediction), a_t = alphas_cumprod[t]. The source latent is the
  VAE latent (mode) of I_s times the VAE scaling factor, the space of z_t. A latent cell is "outside M_e"
  only when none of its pixels is in M_e (max pooling), so that the loss never pulls an edited pixel back
  to the source. The mean runs over the outside cells and channels of the whole batch. z0^ is noisy at
  large t (1/sqrt(a_t) reaches ~15 with SD's schedule at t = 999); `rcl_weighting="sqrt_alpha"` scales each
  sample's term by sqrt(a_t), which bounds the gradient reaching eps^ (off by default: the paper's plain L1).

Classifier-free dropout (as InstructPix2Pix, `sample_conditioning_dropout`) is applied inside
`compute_losses` from the batch's `drop_text`/`drop_image` flags: the prompt becomes the null prompt, the
source latent zero, for the UNet and the REM alike. L_mask and L_edit skip samples whose text or image was
dropped (no referring expression to follow); L_rcl skips samples whose image was dropped (the model cannot
know the source).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from refcoco_edit.errors import DataError, InputError
from referdiffusion.loss_config import TERMS, LossConfig
from referdiffusion.rem import upsample_mask_logits

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler
    from diffusers.configuration_utils import FrozenDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from referdiffusion.rem import RegionEmbedderOutput


class UNetLike(Protocol):
    """What `compute_losses` needs of the UNet: a `UNet2DConditionModel`, or an object that calls it through a
    DDP or autocast wrapper and passes on its `device`, `dtype` and `config`."""

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def config(self) -> FrozenDict: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass
class LossOutput:
    """`loss`: the weighted sum to back-propagate; `terms`: each enabled term, unweighted and detached."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    model_pred: torch.Tensor | None = None
    rem_output: RegionEmbedderOutput | None = None
    timesteps: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------
# masks at latent resolution


def _as_b1hw(mask: torch.Tensor, name: str) -> torch.Tensor:
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise DataError(f"{name} must be B x H x W or B x 1 x H x W, got {tuple(mask.shape)}")
    return mask.float()


def soft_downsample(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x h x w: the fraction of each latent cell's pixels inside the mask (area averaging)."""
    return F.adaptive_avg_pool2d(_as_b1hw(mask, "source_mask"), size).squeeze(1)


def any_downsample(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x h x w: 1 where any pixel of the latent cell is inside the mask (max pooling)."""
    return F.adaptive_max_pool2d(_as_b1hw(mask, "edit_mask"), size).squeeze(1)


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """A zero that keeps `x` in the graph (distributed training wants every parameter used)."""
    return x.sum() * 0.0


# --------------------------------------------------------------------------------------------
# the terms


def noise_loss(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model_pred.float(), target.float(), reduction="mean")


def mask_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, dice_smooth: float = 1.0
) -> torch.Tensor:
    """BCE + Dice; logits and (soft) target B x h x w; `valid` (B bools) selects the samples that count."""
    if logits.shape != target.shape:
        raise DataError(f"mask logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    if valid is not None:
        if not bool(valid.any()):
            return _zero_like_graph(logits)
        logits, target = logits[valid], target[valid]
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="mean")
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + dice_smooth) / (p.sum(1) + t.sum(1) + dice_smooth)
    return bce + dice.mean()


def edit_loss(
    edit_embedding: torch.Tensor,
    prompt_embeds: torch.Tensor,
    edit_token_mask: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over samples of 1 - cos(e_e, mean F_P over the P_e tokens); target detached."""
    weights = edit_token_mask.to(prompt_embeds.dtype)
    counts = weights.sum(1)
    ok = counts > 0
    if valid is not None:
        ok = ok & valid
    if not bool(ok.any()):
        return _zero_like_graph(edit_embedding)
    target = (prompt_embeds.detach() * weights.unsqueeze(-1)).sum(1) / counts.clamp_min(1).unsqueeze(-1)
    cos = F.cosine_similarity(edit_embedding[ok].float(), target[ok].float(), dim=-1, eps=1e-8)
    return (1 - cos).mean()


def _alphas(scheduler: DDPMScheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)[timesteps.to(like.device)]
    return a.view(-1, *([1] * (like.ndim - 1)))


def predicted_x0(
    noisy_latents: torch.Tensor, model_pred: torch.Tensor, timesteps: torch.Tensor, scheduler: DDPMScheduler
) -> torch.Tensor:
    """The model's denoised estimate z0^ from z_t and its output, per the scheduler's prediction type."""
    kind = scheduler.config.prediction_type
    a = _alphas(scheduler, timesteps, noisy_latents)
    z, out = noisy_latents.float(), model_pred.float()
    if kind == "epsilon":
        return (z - (1 - a).sqrt() * out) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * z - (1 - a).sqrt() * out
    if kind == "sample":
        return out
    raise InputError(f"unsupported prediction_type {kind!r}")


def region_control_loss(
    x0_pred: torch.Tensor,
    source_latents: torch.Tensor,
    outside: torch.Tensor,
    valid: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean |z0^ - sg(z_src)| over the cells where `outside` (B x h x w, 1 = outside M_e) and all channels.

    `sample_weights` (B) scale each sample's absolute errors (the sqrt(a_t) option).
    """
    err = (x0_pred.float() - source_latents.detach().float()).abs()  # B x C x h x w
    w = outside.float().unsqueeze(1)
    if sample_weights is not None:
        err = err * sample_weights.float().view(-1, 1, 1, 1)
    if valid is not None:
        w = w * valid.float().view(-1, 1, 1, 1)
    # No outside cell: the numerator is 0 too; dividing by 1 then keeps 0 (and the graph) without a sync.
    denom = w.sum() * err.shape[1]
    return (err * w).sum() / torch.where(denom > 0, denom, torch.ones_like(denom))


# --------------------------------------------------------------------------------------------
# the training step's losses


def sample_conditioning_dropout(
    batch_size: int, prob: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructPix2Pix's dropout flags (drop_text, drop_image): with r ~ U(0, 1), text only for r < p, both
    for p <= r < 2p, image only for 2p <= r < 3p (so `prob` each)."""
    r = torch.rand(batch_size, generator=generator)
    drop_text = r < 2 * prob
    drop_image = (r >= prob) & (r < 3 * prob)
    return drop_text, drop_image


@torch.no_grad()
def encode_null_prompt(tokenizer: PreTrainedTokenizerBase,
                       text_encoder: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """F_P and token mask of the empty prompt (1 x L x D, 1 x L): what text dropout puts in."""
    from referdiffusion.text import encode_prompts

    return encode_prompts(tokenizer, text_encoder, [""])


def _flags(batch: Mapping[str, Any], key: str, n: int, device: torch.device) -> torch.Tensor:
    value = batch.get(key)
    if value is None:
        return torch.zeros(n, dtype=torch.bool, device=device)
    value = torch.as_tensor(value, device=device).bool().view(-1)
    if value.shape[0] != n:
        raise DataError(f"batch[{key!r}] has {value.shape[0]} entries for a batch of {n}")
    return value


def _require(batch: Mapping[str, Any], key: str, why: str) -> torch.Tensor:
    if batch.get(key) is None:
        raise DataError(f"the batch has no {key!r}, needed for {why}")
    return batch[key]


def compute_losses(
    batch: Mapping[str, Any],
    *,
    unet: UNetLike,
    rem: torch.nn.Module | None,
    noise_scheduler: DDPMScheduler,
    text_encoder: PreTrainedModel | None = None,
    vae: AutoencoderKL | None = None,
    config: LossConfig | None = None,
    generator: torch.Generator | None = None,
    null_prompt: tuple[torch.Tensor, torch.Tensor] | None = None,
    scaling_factor: float | None = None,
    train_text_encoder: bool = False,
) -> LossOutput:
    """One training step's losses.

    Batch keys (tensors; B = batch size, L = token length, H x W = image size, h x w = latent size):
    - `input_ids` (B x L) and `attention_mask` (B x L, optional: all ones), the tokenized prompt P; or
      `prompt_embeds` (B x L x D) given directly (then `text_encoder` is not needed);
    - `edited_pixel_values` (B x 3 x H x W in [-1, 1], the target I_e) or `edited_latents` (B x 4 x h x w,
      already times the VAE scaling factor: the diffusion space);
    - `source_pixel_values` (I_s, same format) or `source_latents` (VAE latent mode, unscaled: what the UNet's
      image channels get, as InstructPix2Pix);
    - `source_mask` (B x H x W or B x 1 x H x W, {0, 1} or soft), needed when L_mask is on;
    - `edit_token_mask` (B x L, 1 at the P_e tokens of `input_ids`), needed when L_edit is on;
    - `edit_mask` (M_e, B x H x W or B x 1 x H x W), needed when L_rcl is on;
    - optional `noise` (B x 4 x h x w) and `timesteps` (B, long) to fix the step's randomness (else drawn
      from `generator`), and `drop_text`/`drop_image` (B bools, see `sample_conditioning_dropout`; dropping
      text needs `null_prompt` = `encode_null_prompt(tokenizer, text_encoder)`).

    `rem` is the `RegionEmbedder` (or its DDP / autocast wrapper); `rem=None` trains plain InstructPix2Pix
    (condition = F_P); L_mask and L_edit then must be off. The text encoder runs without gradient unless
    `train_text_encoder` (InstructPix2Pix keeps it frozen); the VAE always does. `scaling_factor` defaults
    to the VAE's.
    """
    config = config or LossConfig()
    if rem is None and (config.enabled("mask") or config.enabled("edit")):
        raise InputError("L_mask and L_edit need the REM: set their weights to 0 to train without it")
    if not any(config.enabled(t) for t in TERMS):
        raise InputError("every loss weight is 0: nothing to train")
    device, dtype = unet.device, unet.dtype  # read once: on a diffusers model each read walks every module
    if scaling_factor is None:
        if vae is None:
            raise InputError("pass the vae or scaling_factor")
        scaling_factor = float(vae.config.scaling_factor)

    # latents
    with torch.no_grad():
        pixel_dtype = vae.dtype if vae is not None else None  # read once, as the UNet's above
        if batch.get("edited_latents") is not None:
            latents = batch["edited_latents"].to(device)
        else:
            pixels = _require(batch, "edited_pixel_values", "the diffusion target").to(device, pixel_dtype)
            latents = vae.encode(pixels).latent_dist.sample(generator=generator) * scaling_factor
        if batch.get("source_latents") is not None:
            source_latents = batch["source_latents"].to(device)
        else:
            pixels = _require(batch, "source_pixel_values", "the image condition").to(device, pixel_dtype)
            source_latents = vae.encode(pixels).latent_dist.mode()
    latents = latents.to(dtype)
    source_latents = source_latents.to(dtype)
    bsz = latents.shape[0]
    h, w = latents.shape[-2:]
    drop_text = _flags(batch, "drop_text", bsz, device)
    drop_image = _flags(batch, "drop_image", bsz, device)

    # noise and timesteps
    if batch.get("noise") is not None:
        noise = batch["noise"].to(device, latents.dtype)
    else:
        gen_device = generator.device if generator is not None else device
        noise = torch.randn(latents.shape, generator=generator, device=gen_device, dtype=latents.dtype).to(device)
    if batch.get("timesteps") is not None:
        timesteps = batch["timesteps"].to(device).long()
    else:
        gen_device = generator.device if generator is not None else device
        n_train = noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, n_train, (bsz,), generator=generator, device=gen_device).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)

    # prompt embedding F_P, with text dropout
    if batch.get("prompt_embeds") is not None:
        prompt_embeds = batch["prompt_embeds"].to(device)
        token_mask = batch.get("attention_mask")
    else:
        ids = _require(batch, "input_ids", "the prompt").to(device)
        token_mask = batch.get("attention_mask")
        use_mask = getattr(text_encoder.config, "use_attention_mask", False)
        with torch.set_grad_enabled(train_text_encoder and torch.is_grad_enabled()):
            enc_mask = token_mask.to(device) if (use_mask and token_mask is not None) else None
            prompt_embeds = text_encoder(ids, attention_mask=enc_mask)[0]
    token_mask = (
        torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=device)
        if token_mask is None
        else token_mask.to(device)
    )
    original_embeds = prompt_embeds
    if bool(drop_text.any()):
        if null_prompt is None:
            raise InputError("drop_text needs null_prompt=encode_null_prompt(tokenizer, text_encoder)")
        null_embeds, null_mask = (t.to(device) for t in null_prompt)
        sel = drop_text.view(-1, 1, 1)
        prompt_embeds = torch.where(sel, null_embeds.to(prompt_embeds.dtype).expand_as(prompt_embeds), prompt_embeds)
        token_mask = torch.where(sel.view(-1, 1), null_mask.to(token_mask.dtype).expand_as(token_mask), token_mask)
    prompt_embeds = prompt_embeds.to(dtype)
    image_cond = source_latents * (~drop_image).to(source_latents.dtype).view(-1, 1, 1, 1)

    # REM and UNet
    rem_out = None
    condition = prompt_embeds
    if rem is not None:
        rem_out = rem(prompt_embeds, image_cond, token_mask)
        condition = rem_out.condition
    model_pred = unet(torch.cat([noisy, image_cond], dim=1), timesteps, encoder_hidden_states=condition,
                      return_dict=False)[0]

    terms: dict[str, torch.Tensor] = {}
    if config.enabled("noise"):
        kind = noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        elif kind == "sample":
            target = latents
        else:
            raise InputError(f"unsupported prediction_type {kind!r}")
        terms["noise"] = noise_loss(model_pred, target)
    referring = ~(drop_text | drop_image)
    if config.enabled("mask"):
        source_mask = _require(batch, "source_mask", "L_mask").to(device)
        logits = rem_out.mask_logits
        if config.mask_resolution == "image":
            m = _as_b1hw(source_mask, "source_mask").squeeze(1)
            logits = upsample_mask_logits(logits, tuple(m.shape[-2:]))
        else:
            m = soft_downsample(source_mask, (h, w))
        terms["mask"] = mask_loss(logits, m, referring, config.dice_smooth)
    if config.enabled("edit"):
        tokens = _require(batch, "edit_token_mask", "L_edit").to(device)
        if tokens.shape != original_embeds.shape[:2]:
            raise DataError(f"edit_token_mask {tuple(tokens.shape)} does not match the prompt tokens "
                            f"{tuple(original_embeds.shape[:2])}")
        terms["edit"] = edit_loss(rem_out.edit_embedding, original_embeds, tokens, ~drop_text)
    if config.enabled("rcl"):
        outside = 1 - any_downsample(_require(batch, "edit_mask", "L_rcl").to(device), (h, w))
        x0 = predicted_x0(noisy, model_pred, timesteps, noise_scheduler)
        weights = None
        if config.rcl_weighting == "sqrt_alpha":
            weights = _alphas(noise_scheduler, timesteps, x0).sqrt().view(-1)
        terms["rcl"] = region_control_loss(x0, source_latents * scaling_factor, outside, ~drop_image, weights)

    loss = sum(config.weight(name) * value for name, value in terms.items())
    return LossOutput(
        loss=loss,
        terms={k: v.detach() for k, v in terms.items()},
        model_pred=model_pred,
        rem_output=rem_out,
        timesteps=timesteps,
    )
