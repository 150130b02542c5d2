"""The micro study: minutes of training through `referdiffusion train` that must teach a model something.

A regression check for the whole training path (data, REM, losses, optimiser, saving, loading), run by
`make test`. It trains the `refshapes-rem_rcl` row's recipe (every loss on), shrunk (a small UNet, a random
VAE of few channels, the study's frozen random CLIP), on a small fixed set of RefShapes edits
(`sample:edits`, the bundled sample, at 64 px), then asks two questions of the saved checkpoint, on that
same set, beside the untrained starting checkpoint:

- Did the UNet learn the edits? The reference edit's latent is noised to `T_EVAL` (fixed noise) and the
  model's one-step estimate of it (x0 from the predicted noise, conditioned on the source latent and the
  prompt) is scored inside M_e (at latent resolution), where the edit happens: its squared error must be
  below `MAX_EDIT_RATIO` x identity's (the source latent unchanged) and below `MAX_VS_START` x the untrained
  model's. A noise loss with a wrong target or sign, or no gradient reaching the UNet, fails this.
- Did the REM learn? Its mask logits, thresholded at 0, must find the referred object M (latent cells
  covered at least half) with IoU above `MIN_MASK_IOU` and `MIN_MASK_GAIN` above the untrained REM's.
  A broken gradient path to the REM leaves it at its initialisation and fails this.

What it does not show: that the model edits from scratch, sampling from noise. Measured here, that needs
more training than fits into minutes on a CPU (after 1,200 micro steps, 20-step DDIM samples were still
1.2-1.4x identity's error inside M_e); the study's rows measure it on the test split.

Latent space, not pixels: the VAE is random (training one is the study's job, too slow here), so its
decoder cannot show an image, but its encoder is a fixed function of the pixels.

    python -m referdiffusion.study.micro [--steps N] [--out DIR]     # prints the measurements as JSON
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from referdiffusion.study.vae import VAEConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline

DATASET = "sample:edits"
SAMPLES = 12  # four referred objects, each with its replace, remove and recolour edit
RESOLUTION = 64
STEPS = 200
T_EVAL = 500  # the timestep the reference edit is noised to (alpha-bar about 0.28 on SD's schedule)
MAX_EDIT_RATIO = 0.75
MAX_VS_START = 0.5
MIN_MASK_IOU = 0.5
MIN_MASK_GAIN = 0.3
MICRO_UNET = {
    "sample_size": [16, 16],
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}
MICRO_REM = {"image_hidden_channels": 32, "image_conv_layers": 1}
MICRO_VAE = VAEConfig(block_out_channels=(16, 16, 32))  # 4x down: 16 x 16 latents
OVERRIDES = [
    "report_to=none", "model.ema=false", "checkpointing_steps=100000", "log_every=50", "batch_size=12",
    f"data.resolution={RESOLUTION}", "data.conditioning_dropout=0", "optim.learning_rate=2e-3",
    "optim.lr_scheduler=constant_with_warmup", "optim.lr_warmup_steps=20",
    f"stages.edit.dataset={DATASET}", f"stages.edit.max_samples={SAMPLES}",
]


@dataclass
class MicroResult:
    steps: int
    edit_error: float  # mean squared latent error inside M_e: the model's estimate vs the reference edit
    identity_error: float  # the same for the source unchanged
    initial_edit_error: float  # the untrained model's
    mask_iou: float  # the trained REM's mask vs M
    initial_mask_iou: float  # the untrained REM's
    first_loss: float
    last_loss: float

    @property
    def edit_ratio(self) -> float:
        return self.edit_error / max(self.identity_error, 1e-12)

    def problems(self) -> list[str]:
        """Why the micro study fails ([] when it passes)."""
        out = []
        if not self.edit_ratio < MAX_EDIT_RATIO:
            out.append(f"edit error {self.edit_error:.3f} is {self.edit_ratio:.2f}x identity's "
                       f"(limit {MAX_EDIT_RATIO})")
        if not self.edit_error < MAX_VS_START * self.initial_edit_error:
            out.append(f"edit error {self.edit_error:.3f} vs {self.initial_edit_error:.3f} untrained "
                       f"(limit {MAX_VS_START}x)")
        if not (self.mask_iou > MIN_MASK_IOU and self.mask_iou > self.initial_mask_iou + MIN_MASK_GAIN):
            out.append(f"REM mask IoU {self.mask_iou:.3f} (untrained {self.initial_mask_iou:.3f}; needs > "
                       f"{MIN_MASK_IOU} and {MIN_MASK_GAIN} above untrained)")
        return out

    @property
    def passed(self) -> bool:
        return not self.problems()


def _set(base: Path, steps: int) -> list[str]:
    return [*OVERRIDES, f"model.pretrained={base}", f"stages.edit.max_steps={steps}"]


def fixed_batch(tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """The micro set as the trainer reads it (one batch of every sample)."""
    from referdiffusion.train.data import DataOptions, EditingDataset, collate, open_dataset

    ds = open_dataset(DATASET, "train", SAMPLES)
    data = EditingDataset(ds, tokenizer, DataOptions(RESOLUTION, "aspect", tokenizer.model_max_length))
    return collate([data[i] for i in range(len(data))])


def evaluate(pipe: ReferDiffusionPipeline, batch: dict[str, torch.Tensor], seed: int = 0,
             timestep: int = T_EVAL) -> dict[str, float]:
    """Denoising error of the reference edit vs identity inside M_e, and the REM's mask IoU against M."""
    import torch
    from diffusers import DDPMScheduler

    from referdiffusion.losses import any_downsample, predicted_x0, soft_downsample

    vae, unet, rem, te = pipe.vae, pipe.unet, pipe.rem, pipe.text_encoder
    sf = float(vae.config.scaling_factor)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        source = vae.encode(batch["source_pixel_values"]).latent_dist.mode()
        target = vae.encode(batch["edited_pixel_values"]).latent_dist.mode() * sf
        out = rem(te(batch["input_ids"])[0], source, batch["attention_mask"])
        noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(seed))
        t = torch.full((len(target),), timestep, dtype=torch.long)
        noisy = sched.add_noise(target, noise, t)
        eps = unet(torch.cat([noisy, source], 1), t, encoder_hidden_states=out.condition).sample
        x0 = predicted_x0(noisy, eps, t, sched)
        hw = target.shape[-2:]
        inside = any_downsample(batch["edit_mask"], hw)[:, None]
        n = inside.sum().clamp(min=1) * target.shape[1]
        edit_err = float((((x0 - target) ** 2) * inside).sum() / n)
        ident_err = float((((source * sf - target) ** 2) * inside).sum() / n)
        obj = soft_downsample(batch["source_mask"], hw) >= 0.5
        pred = out.mask_logits > 0
        iou = float(((pred & obj).sum(dim=(1, 2)) / (pred | obj).sum(dim=(1, 2)).clamp(min=1)).mean())
    return {"edit_error": edit_err, "identity_error": ident_err, "mask_iou": iou}


def run_micro(out: Path | str, steps: int = STEPS) -> MicroResult:
    """Write the micro base checkpoint, train it through `referdiffusion.train`, evaluate; see the docstring."""
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.study.checkpoint import write_checkpoint
    from referdiffusion.train import load_config, train

    out = Path(out)
    base = out / "base"
    from referdiffusion.study.text_encoder import build_tokenizer

    batch = fixed_batch(build_tokenizer())
    write_checkpoint(base, seed=0, unet_overrides=MICRO_UNET, rem_overrides=MICRO_REM, random_vae=MICRO_VAE,
                     scaling_images=batch["source_pixel_values"])
    start = ReferDiffusionPipeline.from_pretrained(base)
    before = evaluate(start, batch)
    result = train(load_config("refshapes-rem_rcl", _set(base, steps)), output_dir=out / "run", progress=False)
    trained = ReferDiffusionPipeline.from_pretrained(result.final)
    after = evaluate(trained, batch)
    k = max(1, min(20, len(result.losses) // 5))
    return MicroResult(steps=result.global_step, edit_error=after["edit_error"],
                       identity_error=after["identity_error"], initial_edit_error=before["edit_error"],
                       mask_iou=after["mask_iou"], initial_mask_iou=before["mask_iou"],
                       first_loss=sum(result.losses[:k]) / k, last_loss=sum(result.losses[-k:]) / k)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.micro", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    import time

    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="micro-study-") as tmp:
        r = run_micro(args.out or tmp, args.steps)
    print(json.dumps({**asdict(r), "edit_ratio": r.edit_ratio, "problems": r.problems(),
                      "wall_s": round(time.perf_counter() - t0, 1)}))
    return 0 if r.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
