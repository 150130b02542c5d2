"""One optimiser step: `gradient_accumulation_steps` micro-batches through `losses.compute_losses`.

Everything random in a step (the classifier-free dropout flags, the VAE sample, the noise and the
timesteps) is drawn from two generators re-seeded from (seed, process, step, micro-batch), so a step
gives the same result whether or not the run was stopped and resumed before it. A loss that is NaN or
infinite on any process raises `NonFiniteLoss` before `backward`, so it never reaches the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.configuration_utils import FrozenDict

    from referdiffusion.loss_config import LossConfig
    from referdiffusion.train.state import TrainState


@dataclass
class NonFiniteLoss(Exception):
    """The loss of step `step` (1-based) is not finite; the trainer turns it into `TrainingDivergedError`."""

    step: int
    stage: str
    value: float
    sample_ids: list[str]


class _ModelCall:
    """What `compute_losses` needs of the UNet (`.device`, `.dtype`, `.config`, a call) when the called object
    is a DDP or autocast wrapper that lacks those attributes.

    Device and dtype are read once, when the step is built (after `accelerator.prepare` placed the model):
    diffusers' `ModelMixin.device`/`.dtype` walk every submodule on each read, a few ms per training step on a
    small UNet."""

    def __init__(self, wrapped: torch.nn.Module, inner: UNet2DConditionModel) -> None:
        self._wrapped, self._inner = wrapped, inner
        self.device: torch.device = inner.device
        self.dtype: torch.dtype = inner.dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapped(*args, **kwargs)

    @property
    def config(self) -> FrozenDict:
        return self._inner.config


class TrainStep:
    """`step(batches, stage, loss_config)` runs optimiser step `state.global_step + 1` and returns its mean
    loss and terms (unweighted), the same on every process."""

    def __init__(self, state: TrainState) -> None:
        import torch

        self.state = state
        self.unet_call = _ModelCall(state.unet_wrapped, state.unet)
        self.device_generator = torch.Generator(device=state.accelerator.device)
        self.cpu_generator = torch.Generator()
        self.wrapped = [state.unet_wrapped] + ([state.rem_wrapped] if state.rem_wrapped is not None else [])

    def _reseed(self, step: int, micro: int) -> None:
        import numpy as np

        seq = np.random.SeedSequence([self.state.config.seed, self.state.accelerator.process_index, step, micro])
        a, b = (int(x) % (2**63) for x in seq.generate_state(2, np.uint64))
        self.device_generator.manual_seed(a)
        self.cpu_generator.manual_seed(b)

    def __call__(self, batches: Iterator[dict[str, Any]], stage: str,
                 loss_config: LossConfig) -> tuple[float, dict[str, float]]:
        import torch
        from accelerate.utils import gather_object

        from referdiffusion.losses import compute_losses, sample_conditioning_dropout

        st = self.state
        acc, cfg, step = st.accelerator, st.config, st.global_step
        losses: list[torch.Tensor] = []
        term_sums: dict[str, torch.Tensor] = {}
        for micro in range(cfg.gradient_accumulation_steps):
            batch = next(batches)
            self._reseed(step, micro)
            bsz = batch["input_ids"].shape[0]
            batch["drop_text"], batch["drop_image"] = sample_conditioning_dropout(
                bsz, cfg.data.conditioning_dropout, self.cpu_generator)
            with acc.accumulate(*self.wrapped):
                out = compute_losses(
                    batch, unet=self.unet_call, rem=st.rem_wrapped,
                    noise_scheduler=st.noise_scheduler, text_encoder=st.text_encoder, vae=st.vae,
                    config=loss_config, generator=self.device_generator, null_prompt=st.null_prompt,
                    scaling_factor=float(st.vae.config.scaling_factor),
                )
                value = acc.gather(out.loss.detach().float().reshape(1))
                if not bool(torch.isfinite(value).all()):
                    ids = gather_object(list(batch["sample_id"]))
                    bad = value[~torch.isfinite(value)][0].item()
                    raise NonFiniteLoss(step + 1, stage, bad, [str(i) for i in ids])
                acc.backward(out.loss)
                if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                    acc.clip_grad_norm_(st.params, cfg.optim.max_grad_norm)
                st.optimizer.step()
                st.optimizer.zero_grad(set_to_none=True)
            losses.append(value.mean())
            for k, v in out.terms.items():
                term_sums[k] = term_sums.get(k, 0) + acc.gather(v.float().reshape(1)).mean()
        if not acc.sync_gradients:  # pragma: no cover (the micro-batch loop always ends on a sync)
            raise RuntimeError("gradient accumulation out of step")
        st.lr_scheduler.step()
        for name, ema in st.emas.items():
            ema.step(st.module(name).parameters())
        n = len(losses)
        loss = float(torch.stack(losses).sum().item()) / n
        terms = {k: float(v.item()) / n for k, v in term_sums.items()}
        return loss, terms
