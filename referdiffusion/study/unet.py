"""The UNet planned for the study's rows, and a measurement of its training step on one CPU thread.

InstructPix2Pix's UNet unchanged in kind (8 input channels: the noisy edited latent and the source
latent; 4 out), sized for the 4 x 12 x 16 latents of the rows' 64 x 48 working size: blocks 32/64/96 with
one ResNet layer each, cross-attention (width 64, the text encoder's) only at the two lower levels
(6 x 8 and 3 x 4), where self-attention is cheap. About 2.7 M parameters, 5.5 MB in fp16, so that the four
rows ship within the repository's 40 MB for trained weights.

`python -m referdiffusion.study.unet time` measures seconds per training step (forward, noise MSE,
backward, AdamW) at the study's batch size, which sets how many steps a row can take in its hour.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

LATENT_HW = (12, 16)
UNET_CONFIG: dict = {
    "sample_size": list(LATENT_HW),
    "in_channels": 8,
    "out_channels": 4,
    "block_out_channels": [32, 64, 96],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}


def build_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    """The planned UNet, weights drawn from `seed`."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides})


def time_training_step(batch_size: int = 16, steps: int = 12, warmup: int = 3, tokens: int = 32,
                       text_dim: int = 64) -> dict:
    """Median and mean seconds of an InstructPix2Pix training step of the planned UNet (random data)."""
    import torch
    from diffusers import DDPMScheduler

    unet = build_unet().train()
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    c, (h, w) = UNET_CONFIG["out_channels"], LATENT_HW
    edited = torch.randn(batch_size, c, h, w, generator=g)
    source = torch.randn(batch_size, c, h, w, generator=g)
    text = torch.randn(batch_size, tokens, text_dim, generator=g)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        noise = torch.randn(edited.shape, generator=g)
        ts = torch.randint(0, 1000, (batch_size,), generator=g)
        noisy = sched.add_noise(edited, noise, ts)
        pred = unet(torch.cat([noisy, source], 1), ts, encoder_hidden_states=text).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"batch_size": batch_size, "steps": steps, "tokens": tokens, "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in unet.parameters()), "median_s": statistics.median(times),
            "mean_s": statistics.fmean(times), "min_s": min(times)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.unet", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("time", help="seconds per training step on this machine")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--steps", type=int, default=12)
    t.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(json.dumps(time_training_step(args.batch_size, args.steps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
