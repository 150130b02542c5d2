"""Benchmark: one ReferDiffusion training step against a plain InstructPix2Pix training step.

Both steps use the same UNet (same size and initial weights), the same frozen VAE and text encoder,
the same batch (pixels in [-1, 1], masks, token ids, fixed noise and timesteps) and AdamW. They differ
by what ReferDiffusion adds:

- InstructPix2Pix: `compute_losses(rem=None)`, L_noise only, AdamW over the UNet;
- ReferDiffusion: the Region-Embedder Module in front of the UNet and all four losses (L_noise, L_mask,
  L_edit, L_rcl), AdamW over UNet + REM.

A step = VAE encoding of both images, text encoding, forward, backward, optimiser step (as the trainer's).
Mixed precision as the trainer runs it: float32 weights, autocast to `--dtype` (float16 with a gradient
scaler on CUDA), the frozen VAE and text encoder in `--dtype`.

Time: both variants live in this process and alternate A B B A ... after `--warmup` steps each, so
load drifts on a shared machine hit both; the table gives the median and best wall time of `--steps`
steps, and on the CPU the median process CPU time. Memory: each variant runs in its own subprocess
(`--worker`), so peaks do not mix. On CUDA the peak is `torch.cuda.max_memory_allocated` over the
steps (weights, gradients, AdamW state and activations; the statistics are reset after the models are
built). On the CPU, tracemalloc cannot see torch's allocations (they bypass Python's allocator), so the
peak is the process's maximum resident set size (`ru_maxrss`) minus the resident size after imports,
i.e. what building the models and training added; allocator caching makes it coarser than the CUDA figure.

    python benchmarks/referdiffusion_train_step.py                 # tiny models, CPU, 64 px
    python benchmarks/referdiffusion_train_step.py --preset sd15 --device cuda --dtype float16 --resolution 512
    python benchmarks/referdiffusion_train_step.py --preset sd15 --flops   # FLOP count only, meta device, any machine
    python benchmarks/referdiffusion_train_step.py --preset refshapes --threads 1   # the RefShapes study's models

`refshapes` times what the study's rows actually run against what a plain diffusers script would: the
study's starting checkpoint (`referdiffusion.study.checkpoint`: the small UNet, a VAE of refshapes-vae's
shape, the frozen random CLIP of width 64, the REM) at the rows' 64 px (RefShapes' pictures at 64 x 48,
padded to 64^2, as the trainer's `aspect` protocol feeds them), batch 16, 32 tokens, three steps on the same batch:
- "plain": a diffusers-style InstructPix2Pix training step written out as `train_instruct_pix2pix.py` does
  it (VAE sample of the target, source latent mode, text encoding, conditioning dropout, UNet, MSE,
  backward, gradient clipping, AdamW, LR schedule), plain torch, no accelerate;
- "finetune": the project's trainer step (`referdiffusion.train.step.TrainStep` through accelerate, with
  its re-seeded generators, NaN check and gathers) on the `refshapes-finetune` config (no REM, L_noise);
- "rem_rcl": the same trainer step on `refshapes-rem_rcl` (REM, L_noise + L_mask + L_edit + L_rcl).
EMA is off in all three (the plain step has none); the target is at most 1.15x the plain step's time.

`tiny` builds the tiny test models' architectures (UNet 32-64 channels, 2-layer CLIP text model) and `sd15`
Stable Diffusion 1.5's (UNet 320-1280 channels, CLIP ViT-L/14 text encoder, REM at width 768), both with
random weights from configs: no download, no tokenizer (token ids are drawn at random). Needs only torch,
diffusers, transformers, accelerate, safetensors, numpy and this project's `referdiffusion` modules.
Targets: ReferDiffusion / InstructPix2Pix at most 1.15x time and 1.10x memory.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

TIME_TARGET, MEMORY_TARGET = 1.15, 1.10
VARIANTS = ("ip2p", "referdiffusion")
LABELS = {"ip2p": "InstructPix2Pix (L_noise)", "referdiffusion": "ReferDiffusion (REM + 4 losses)"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
VOCAB, BOS, EOS, MAX_LEN = 49408, 49406, 49407, 77


# ---------------------------------------------------------------------------------------------
# models


def _unet(preset: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if preset == "tiny":
        return UNet2DConditionModel(
            sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
            norm_num_groups=32,
        )
    return UNet2DConditionModel(in_channels=8, cross_attention_dim=768, sample_size=64)  # defaults = SD 1.5


def _frozen(preset: str) -> dict[str, Any]:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    if preset == "tiny":
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32),
                            layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64)
        text_cfg = CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=MAX_LEN, hidden_act="quick_gelu",
                                  bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    else:
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                            sample_size=512)
        text_cfg = CLIPTextConfig(vocab_size=VOCAB, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, max_position_embeddings=MAX_LEN, hidden_act="quick_gelu",
                                  bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    torch.manual_seed(2)
    text = CLIPTextModel(text_cfg)
    return {"vae": vae, "text_encoder": text}


def _noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon")


def _rem(text_dim: int):
    """The REM `referdiffusion init` would add (default arguments at the text encoder's width)."""
    from referdiffusion.rem import RegionEmbedder

    torch.manual_seed(3)
    heads = next(h for h in (8, 4, 2, 1) if text_dim % h == 0)
    return RegionEmbedder(text_dim=text_dim, latent_channels=4, num_attention_heads=heads)


# ---------------------------------------------------------------------------------------------
# data


def make_batch(batch_size: int, resolution: int, latent_channels: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pixels, rectangle masks, token ids with an edit span, fixed noise and timesteps."""
    g = torch.Generator().manual_seed(seed)
    b, r, lat = batch_size, resolution, resolution // 8
    ids = torch.full((b, MAX_LEN), EOS, dtype=torch.long)
    attn = torch.zeros(b, MAX_LEN, dtype=torch.long)
    edit = torch.zeros(b, MAX_LEN)
    source_mask = torch.zeros(b, 1, r, r)
    edit_mask = torch.zeros(b, 1, r, r)
    for i in range(b):
        n = int(torch.randint(8, 20, (1,), generator=g))
        ids[i, 0], ids[i, 1:n + 1], ids[i, n + 1] = BOS, torch.randint(0, 49000, (n,), generator=g), EOS
        attn[i, : n + 2] = 1
        edit[i, 2:6] = 1
        y0, x0 = (int(v) for v in torch.randint(0, r // 2, (2,), generator=g))
        source_mask[i, :, y0:y0 + r // 3, x0:x0 + r // 3] = 1
        edit_mask[i, :, max(0, y0 - 4):y0 + r // 3 + 4, max(0, x0 - 4):x0 + r // 3 + 4] = 1
    return {
        "input_ids": ids, "attention_mask": attn, "edit_token_mask": edit,
        "edited_pixel_values": torch.rand(b, 3, r, r, generator=g) * 2 - 1,
        "source_pixel_values": torch.rand(b, 3, r, r, generator=g) * 2 - 1,
        "source_mask": source_mask, "edit_mask": edit_mask,
        "noise": torch.randn(b, latent_channels, lat, lat, generator=g),
        "timesteps": torch.randint(0, 1000, (b,), generator=g),
    }


# ---------------------------------------------------------------------------------------------
# the step


class Setup:
    """One variant's trainable parts and optimiser, over shared frozen parts."""

    def __init__(self, variant: str, unet: Any, frozen: dict[str, Any], device: torch.device,
                 dtype: torch.dtype) -> None:
        from referdiffusion.losses import LossConfig

        self.variant, self.frozen, self.device, self.dtype = variant, frozen, device, dtype
        self.unet = unet.to(device).train()
        params = list(self.unet.parameters())
        self.rem = None
        if variant == "referdiffusion":
            with device:
                self.rem = _rem(frozen["text_encoder"].config.hidden_size).to(device).train()
            params += list(self.rem.parameters())
            self.loss_config = LossConfig()  # all four terms, weight 1
        else:
            self.loss_config = LossConfig(mask_weight=0, edit_weight=0, rcl_weight=0)
        self.optimizer = torch.optim.AdamW(params, lr=1e-5)
        self.scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16 and device.type == "cuda"))

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        from referdiffusion.losses import compute_losses

        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = compute_losses(batch, unet=self.unet, rem=self.rem, noise_scheduler=self.frozen["scheduler"],
                                 text_encoder=self.frozen["text_encoder"], vae=self.frozen["vae"],
                                 config=self.loss_config)
        self.scaler.scale(out.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(out.loss.detach())


def _frozen_on(preset: str, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    with device:  # random initialisation on the device itself (fast for SD 1.5 sizes on a GPU)
        frozen = _frozen(preset)
    frozen["scheduler"] = _noise_scheduler()
    for name in ("vae", "text_encoder"):
        frozen[name].requires_grad_(False)
        frozen[name].to(device)
        if dtype != torch.float32:
            frozen[name].to(dtype=dtype)
        frozen[name].eval()
    return frozen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of one variant (run in its own process)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    base_rss = _rss_mb()
    frozen = _frozen_on(args.preset, device, dtype)
    with device:
        unet = _unet(args.preset)
    setup = Setup(args.worker, unet, frozen, device, dtype)
    batch = make_batch(args.batch_size, args.resolution)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup + 2):
        setup.step(batch)
    _sync(device)
    out: dict[str, Any] = {"variant": args.worker}
    if device.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["kind"] = "torch.cuda.max_memory_allocated"
    else:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        out["peak_mb"] = peak_rss - base_rss
        out["peak_rss_mb"] = peak_rss
        out["kind"] = "peak RSS - RSS after imports"
    return out


def measure_memory(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", variant, "--preset", args.preset, "--device", args.device,
               "--dtype", args.dtype, "--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
               "--warmup", str(args.warmup)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"memory worker {variant} failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def measure_time(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    frozen = _frozen_on(args.preset, device, dtype)
    with device:
        unet = _unet(args.preset)
    setups = {"ip2p": Setup("ip2p", copy.deepcopy(unet), frozen, device, dtype),
              "referdiffusion": Setup("referdiffusion", unet, frozen, device, dtype)}
    batch = make_batch(args.batch_size, args.resolution)
    for _ in range(args.warmup):
        for s in setups.values():
            s.step(batch)
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
    losses: dict[str, float] = {}
    for i in range(args.steps):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]  # A B, B A, ...
        for v in order:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            losses[v] = setups[v].step(batch)
            _sync(device)
            walls[v].append(time.perf_counter() - t0)
            cpus[v].append(time.process_time() - c0)
    return {v: {"median_ms": 1e3 * statistics.median(walls[v]), "best_ms": 1e3 * min(walls[v]),
                "cpu_median_ms": 1e3 * statistics.median(cpus[v]), "last_loss": losses[v],
                "parameters_m": sum(p.numel() for p in setups[v].optimizer.param_groups[0]["params"]) / 1e6}
            for v in VARIANTS}


def count_flops(preset: str, batch_size: int, resolution: int) -> dict[str, float]:
    """FLOPs of both steps' forward and backward (VAE and text encoding included, the optimiser and the
    element-wise losses left out), counted on the meta device: nothing is computed, any size fits."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        frozen, unet = _frozen(preset), _unet(preset)
        rem = _rem(frozen["text_encoder"].config.hidden_size)
    b, lat = batch_size, resolution // 8

    def count(use_rem: bool) -> int:
        with FlopCounterMode(display=False) as counter, torch.device("meta"):
            with torch.no_grad():
                frozen["vae"].encode(torch.randn(2 * b, 3, resolution, resolution))
                embeds = frozen["text_encoder"](torch.zeros(b, MAX_LEN, dtype=torch.long))[0]
            cond, extra = embeds, 0.0
            if use_rem:
                out = rem(embeds, torch.randn(b, 4, lat, lat), torch.ones(b, MAX_LEN))
                cond, extra = out.condition, out.mask_logits.mean() + out.edit_embedding.mean()
            pred = unet(torch.randn(b, 8, lat, lat), torch.zeros(b, dtype=torch.long),
                        encoder_hidden_states=cond).sample
            (pred.pow(2).mean() + extra).backward()
        return counter.get_total_flops()

    plain, refer = count(False), count(True)
    return {"ip2p_tflop": plain / 1e12, "referdiffusion_tflop": refer / 1e12, "ratio": refer / plain,
            "unet_params_m": sum(p.numel() for p in unet.parameters()) / 1e6,
            "rem_params_m": sum(p.numel() for p in rem.parameters()) / 1e6}


# ---------------------------------------------------------------------------------------------
# the RefShapes study's models: the trainer's step against a plain diffusers-style step

REFSHAPES_VARIANTS = ("plain", "finetune", "rem_rcl")
REFSHAPES_LABELS = {"plain": "plain diffusers-style InstructPix2Pix step",
                    "finetune": "trainer step, refshapes-finetune (no REM, L_noise)",
                    "rem_rcl": "trainer step, refshapes-rem_rcl (REM, 4 losses)"}
REFSHAPES_TOKENS = 32


def refshapes_batch(batch_size: int, resolution: int = 64, seed: int = 0) -> dict[str, Any]:
    """A batch in the trainer's format: pictures r x 3r/4 at the top of an r^2 canvas, masks, 32 tokens."""
    g = torch.Generator().manual_seed(seed)
    b, r, h = batch_size, resolution, resolution * 3 // 4
    ids = torch.full((b, REFSHAPES_TOKENS), EOS, dtype=torch.long)
    attn = torch.zeros(b, REFSHAPES_TOKENS, dtype=torch.long)
    edit = torch.zeros(b, REFSHAPES_TOKENS)
    source_mask, edit_mask = torch.zeros(b, 1, r, r), torch.zeros(b, 1, r, r)
    pixel_mask = torch.zeros(b, 1, r, r)
    pixel_mask[:, :, :h] = 1
    src, dst = torch.zeros(b, 3, r, r), torch.zeros(b, 3, r, r)
    src[:, :, :h] = torch.rand(b, 3, h, r, generator=g) * 2 - 1
    dst[:, :, :h] = src[:, :, :h]
    for i in range(b):
        n = int(torch.randint(8, 20, (1,), generator=g))
        ids[i, 0], ids[i, 1:n + 1], ids[i, n + 1] = BOS, torch.randint(0, 49000, (n,), generator=g), EOS
        attn[i, : n + 2] = 1
        edit[i, 1:4] = 1
        y0, x0 = int(torch.randint(0, h - 24, (1,), generator=g)), int(torch.randint(0, r - 24, (1,), generator=g))
        source_mask[i, :, y0:y0 + 20, x0:x0 + 20] = 1
        edit_mask[i, :, y0:y0 + 24, x0:x0 + 24] = 1
        dst[i, :, y0:y0 + 24, x0:x0 + 24] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return {"sample_id": [f"bench-{i}" for i in range(b)], "source_pixel_values": src, "edited_pixel_values": dst,
            "source_mask": source_mask, "edit_mask": edit_mask, "pixel_mask": pixel_mask, "input_ids": ids,
            "attention_mask": attn, "edit_token_mask": edit}


class PlainIP2PStep:
    """InstructPix2Pix's training step as diffusers' example script writes it, plain torch."""

    def __init__(self, pipe: Any, learning_rate: float, dropout: float, total_steps: int) -> None:
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.pipe, self.dropout = pipe, dropout
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        pipe.vae.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        self.unet = pipe.unet.train()
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=learning_rate, weight_decay=1e-2)
        self.lr_scheduler = get_scheduler("cosine", optimizer=self.optimizer, num_warmup_steps=200,
                                          num_training_steps=total_steps)
        self.generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            ids = torch.full((1, REFSHAPES_TOKENS), EOS, dtype=torch.long)
            ids[0, 0] = BOS
            self.null = pipe.text_encoder(ids)[0]

    def __call__(self, batch: dict[str, Any]) -> float:
        g, vae, sf = self.generator, self.pipe.vae, float(self.pipe.vae.config.scaling_factor)
        with torch.no_grad():
            latents = vae.encode(batch["edited_pixel_values"]).latent_dist.sample(generator=g) * sf
        noise = torch.randn(latents.shape, generator=g)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (bsz,), generator=g)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with torch.no_grad():
            text = self.pipe.text_encoder(batch["input_ids"])[0]
            image = vae.encode(batch["source_pixel_values"]).latent_dist.mode()
        p = self.dropout
        random_p = torch.rand(bsz, generator=g)
        text = torch.where((random_p < 2 * p).view(-1, 1, 1), self.null.expand_as(text), text)
        keep_image = 1 - ((random_p >= p) & (random_p < 3 * p)).float()
        image = image * keep_image.view(-1, 1, 1, 1)
        pred = self.unet(torch.cat([noisy, image], dim=1), timesteps, encoder_hidden_states=text).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


class TrainerStep:
    """The project's trainer step (`TrainStep`) on one of the study's configs, EMA off, no tracker."""

    def __init__(self, config_name: str, pipe: Any) -> None:
        from accelerate import Accelerator

        from referdiffusion.train.config import load_config
        from referdiffusion.train.state import build_state
        from referdiffusion.train.step import TrainStep

        self.config = load_config(config_name, ["model.ema=false", "report_to=none", "model.pretrained=unused"])
        state = build_state(self.config, Accelerator(), pipe, REFSHAPES_TOKENS)
        self.state, self.step = state, TrainStep(state)
        self.loss_config = self.config.stage_loss_config(self.config.stages[-1])

    def __call__(self, batch: dict[str, Any]) -> float:
        loss, _ = self.step(iter([dict(batch)]), self.config.stages[-1].name, self.loss_config)
        self.state.global_step += 1
        return loss


def measure_refshapes(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from referdiffusion.study.checkpoint import build_pipeline

    def pipe() -> Any:  # the same starting weights for every variant
        return build_pipeline(seed=0)[0]

    from referdiffusion.train.config import load_config

    ref = load_config("refshapes-finetune", ["model.pretrained=unused"])
    steps = {"plain": PlainIP2PStep(pipe(), ref.optim.learning_rate, ref.data.conditioning_dropout, ref.total_steps),
             "finetune": TrainerStep("refshapes-finetune", pipe()),
             "rem_rcl": TrainerStep("refshapes-rem_rcl", pipe())}
    batch = refshapes_batch(args.batch_size, args.resolution)
    for _ in range(args.warmup):
        for fn in steps.values():
            fn(batch)
    walls: dict[str, list[float]] = {v: [] for v in steps}
    cpus: dict[str, list[float]] = {v: [] for v in steps}
    order = list(steps)
    for i in range(args.steps):
        for v in (order if i % 2 == 0 else order[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            steps[v](batch)
            walls[v].append(time.perf_counter() - t0)
            cpus[v].append(time.process_time() - c0)
    return {v: {"median_ms": 1e3 * statistics.median(walls[v]), "best_ms": 1e3 * min(walls[v]),
                "cpu_median_ms": 1e3 * statistics.median(cpus[v]),
                **dict(zip(("ratio", "ratio_low", "ratio_high"), paired_ratio(walls[v], walls["plain"])))}
            for v in steps}


def paired_ratio(times: list[float], base: list[float], n_boot: int = 2000) -> tuple[float, float, float]:
    """Median over rounds of time / base time of the same round, with a percentile-bootstrap 95% interval.

    A round runs every variant once, back to back, so a slow spell of the machine hits both sides of a
    ratio; the interval says how far another run of the benchmark could move it."""
    import numpy as np

    r = np.asarray(times) / np.asarray(base)
    rng = np.random.default_rng(0)
    boot = np.median(r[rng.integers(0, len(r), (n_boot, len(r)))], axis=1)
    return float(np.median(r)), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def report_refshapes(args: argparse.Namespace) -> None:
    times = measure_refshapes(args)
    base = times["plain"]
    print(f"training step, preset refshapes (the study's models), cpu, {args.resolution}x{args.resolution} "
          f"({args.resolution}x{args.resolution * 3 // 4} padded), batch {args.batch_size}, {args.steps} timed steps "
          f"each (alternating order), torch threads {torch.get_num_threads()}")
    header = ("step", "median ms", "best ms", "CPU ms", "samples/s", "time ratio", "CPU ratio",
              "paired ratio [95% CI]")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for v in REFSHAPES_VARIANTS:
        t = times[v]
        print(f"| {REFSHAPES_LABELS[v]} | {t['median_ms']:.0f} | {t['best_ms']:.0f} | {t['cpu_median_ms']:.0f} | "
              f"{1e3 * args.batch_size / t['median_ms']:.1f} | {t['median_ms'] / base['median_ms']:.3f} | "
              f"{t['cpu_median_ms'] / base['cpu_median_ms']:.3f} | "
              f"{t['ratio']:.3f} [{t['ratio_low']:.3f}, {t['ratio_high']:.3f}] |")
    for v in ("finetune", "rem_rcl"):
        t = times[v]
        verdict = ("within" if t["ratio_high"] <= TIME_TARGET else "OVER" if t["ratio_low"] > TIME_TARGET
                   else "not separable from")
        print(f"{v}: {verdict} target (paired ratio {t['ratio']:.3f} [{t['ratio_low']:.3f}, {t['ratio_high']:.3f}], "
              f"target {TIME_TARGET} x plain)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "time": times}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("tiny", "sd15", "refshapes"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="autocast dtype (float32: no mixed precision)")
    parser.add_argument("--resolution", type=int, help="image side (default 64 tiny, 512 sd15, 64 refshapes)")
    parser.add_argument("--batch-size", type=int, help="default 4 (16 for refshapes, the rows' batch)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory workers")
    parser.add_argument("--flops", action="store_true",
                        help="only count both steps' FLOPs on the meta device (no compute; e.g. sd15 on a CPU)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.resolution = args.resolution or {"tiny": 64, "sd15": 512, "refshapes": 64}[args.preset]
    args.batch_size = args.batch_size or (16 if args.preset == "refshapes" else 4)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.preset == "refshapes":
        if args.device != "cpu" or args.flops:
            raise SystemExit("--preset refshapes runs on the CPU and times steps (no --device, no --flops)")
        report_refshapes(args)
        return
    if args.flops:
        f = count_flops(args.preset, args.batch_size, args.resolution)
        print(f"FLOPs per training step (forward + backward), preset {args.preset}, "
              f"{args.resolution}x{args.resolution}, batch {args.batch_size}: InstructPix2Pix "
              f"{1e3 * f['ip2p_tflop']:.2f} GFLOP, ReferDiffusion {1e3 * f['referdiffusion_tflop']:.2f} GFLOP, "
              f"ratio {f['ratio']:.4f}; parameters UNet {f['unet_params_m']:.2f} M, REM {f['rem_params_m']:.2f} M")
        return

    memory = {} if args.no_memory else measure_memory(args)
    times = measure_time(args)
    rows = []
    for v in VARIANTS:
        t, m = times[v], memory.get(v, {})
        rows.append((LABELS[v], f"{t['median_ms']:.1f}", f"{t['best_ms']:.1f}", f"{t['cpu_median_ms']:.1f}",
                     f"{m['peak_mb']:.1f}" if m else "-", f"{t['parameters_m']:.2f}"))
    tr = times["referdiffusion"]["median_ms"] / times["ip2p"]["median_ms"]
    cr = times["referdiffusion"]["cpu_median_ms"] / times["ip2p"]["cpu_median_ms"]
    mr = memory["referdiffusion"]["peak_mb"] / memory["ip2p"]["peak_mb"] if memory else float("nan")
    rows.append(("ratio (target time <= 1.15, memory <= 1.10)", f"{tr:.3f}", "", f"{cr:.3f}",
                 f"{mr:.3f}" if memory else "-", ""))
    print(f"training step, preset {args.preset}, {args.device}, {args.dtype}, {args.resolution}x{args.resolution}, "
          f"batch {args.batch_size}, {args.steps} timed steps each (ABBA), torch threads {torch.get_num_threads()}")
    if memory:
        print(f"memory: {memory['ip2p']['kind']}")
    header = ("step", "median ms", "best ms", "CPU ms", "peak MB", "trained params (M)")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    ok_t, ok_m = tr <= TIME_TARGET, (not memory) or mr <= MEMORY_TARGET
    memory_verdict = (f"memory {'within' if ok_m else 'OVER'} target ({mr:.3f} <= {MEMORY_TARGET})" if memory
                      else "memory skipped")
    print(f"time {'within' if ok_t else 'OVER'} target ({tr:.3f} <= {TIME_TARGET}); {memory_verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "time": times, "memory": memory,
                                               "time_ratio": tr, "cpu_time_ratio": cr, "memory_ratio": mr}, indent=2))


if __name__ == "__main__":
    main()
