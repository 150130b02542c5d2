"""Benchmark: inference time of ReferDiffusion against diffusers' InstructPix2Pix pipeline.

Both pipelines share the very same components (UNet, VAE, text encoder, tokenizer, DDIM scheduler);
ReferDiffusion adds its Region-Embedder Module (run once per call) and the mask output. Runs alternate
in ABBA order after one warm-up each, so that drifts in machine load hit both; the table gives the median
and the best wall time of `--repeat` timed calls, the median process CPU time (less sensitive to other
processes on a shared machine; meaningless on a GPU) and the ratios of medians (target: at most 1.05).
The fresh REM leaves the edit unchanged, so the script also checks that both
produce the same images (max |difference| printed).

    python benchmarks/referdiffusion_inference.py [--preset tiny] [--size 64] [--steps 20] [--repeat 7]
    python benchmarks/referdiffusion_inference.py --preset sd15 --device cuda --dtype float16   # on a GPU

`tiny` uses the built-in tiny InstructPix2Pix (`tiny-ip2p`, random weights); `sd15` builds random-weight
components at Stable Diffusion 1.5 size (UNet 320-1280 channels, CLIP ViT-L text encoder, REM at width
768), no download needed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def tiny_pipeline():
    from refcoco_edit.models.resolver import resolve
    from referdiffusion.init import make_pipeline

    return make_pipeline(resolve("tiny-ip2p").source)


def sd15_pipeline():
    """Random weights, real Stable Diffusion 1.5 / InstructPix2Pix sizes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from refcoco_edit.models.tiny import _scheduler, build_clip_tokenizer
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.rem import RegionEmbedder

    torch.manual_seed(0)
    unet = UNet2DConditionModel(in_channels=8, cross_attention_dim=768, sample_size=64)  # diffusers' defaults = SD 1.5
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, projection_dim=768))
    rem = RegionEmbedder(text_dim=768, latent_channels=4)
    return ReferDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=build_clip_tokenizer(), unet=unet,
                                  scheduler=_scheduler(), rem=rem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--size", type=int, help="image side in pixels (default 64 tiny, 512 sd15)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (64 if args.preset == "tiny" else 512)

    from diffusers import StableDiffusionInstructPix2PixPipeline
    from diffusers.utils import logging as dlog
    from PIL import Image

    dlog.set_verbosity_error()
    rd = tiny_pipeline() if args.preset == "tiny" else sd15_pipeline()
    rd = rd.to(args.device, getattr(torch, args.dtype))
    ip = StableDiffusionInstructPix2PixPipeline(
        vae=rd.vae, text_encoder=rd.text_encoder, tokenizer=rd.tokenizer, unet=rd.unet, scheduler=rd.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    for p in (rd, ip):
        p.set_progress_bar_config(disable=True)

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(args.batch)]
    prompts = ["replace the cow on the left with a panda"] * args.batch

    def call(pipe) -> tuple[float, float, np.ndarray]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        out = pipe(prompts, images, num_inference_steps=args.steps, output_type="np",
                   generator=torch.Generator(args.device).manual_seed(0))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu, out.images

    _, _, a = call(ip)
    _, _, b = call(rd)
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    names = {"ip": "InstructPix2Pix (diffusers)", "rd": "ReferDiffusion"}
    wall: dict[str, list[float]] = {"ip": [], "rd": []}
    cpu: dict[str, list[float]] = {"ip": [], "rd": []}
    for i in range(args.repeat):
        order = (("ip", ip), ("rd", rd)) if i % 2 == 0 else (("rd", rd), ("ip", ip))  # ABBA
        for key, pipe in order:
            w, c, _ = call(pipe)
            wall[key].append(w)
            cpu[key].append(c)

    print(f"\npreset {args.preset}, {size}x{size}, batch {args.batch}, {args.steps} DDIM steps, "
          f"{args.device} {args.dtype}, torch threads {torch.get_num_threads()}, {args.repeat} timed calls each "
          f"(alternating); max |image difference| {diff:.2e}\n")
    print("| pipeline | wall median s | wall best s | process CPU median s | ratio (wall median) "
          "| ratio (CPU median) |")
    print("|---|---:|---:|---:|---:|---:|")
    base_w, base_c = statistics.median(wall["ip"]), statistics.median(cpu["ip"])
    for key in ("ip", "rd"):
        mw, mc = statistics.median(wall[key]), statistics.median(cpu[key])
        print(f"| {names[key]} | {mw:.3f} | {min(wall[key]):.3f} | {mc:.3f} | {mw / base_w:.3f} | {mc / base_c:.3f} |")
    ratio = statistics.median(wall["rd"]) / base_w
    print(f"\nReferDiffusion / InstructPix2Pix = {ratio:.3f} (target <= 1.05): {'OK' if ratio <= 1.05 else 'OVER'}")


if __name__ == "__main__":
    main()
