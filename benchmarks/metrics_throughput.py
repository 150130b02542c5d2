"""Benchmark: scoring throughput of the batched background metrics against a per-image loop.

The per-image loop is written in the style of MagicBrush's evaluation (`eval_distance`): for each
sample, resize the output to the source's size, turn both images into float CxHxW tensors in
[0, 1] (`ToTensor`: uint8 -> permute -> float / 255), take the squared difference with torch, and
reduce it, here over the background pixels (M_e == 0), with one `.item()` per image; PSNR follows
from that MSE, and SSIM is the usual per-image implementation (float32, the 11x11 Gaussian window
as one grouped 2-D convolution per image). Our side is
`benchmark.metrics` (`L2Background`, `PSNRBackground`, `SSIMBackground`) fed the same samples as
batches of `MetricInput`. Both start from PIL images and numpy masks in memory; building the
`MetricInput`s (validation only) is outside the timing, converting images to arrays is inside it for
both. Two input kinds: `pil` (PIL images, as MagicBrush reads them; turning a PIL image into an
array costs about as much as our whole L2 kernel) and `array` (already-decoded HxWx3 uint8 arrays,
which `MetricInput` keeps without a copy). Values must agree (max |difference| printed; the script
fails if any exceeds the tolerance).

    python benchmarks/metrics_throughput.py [--samples 500] [--size 256] [--repeat 3] [--threads 1]

Prints a Markdown table: samples/s of each side (best of --repeat runs) and the speed-up.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from benchmark.metrics import MetricInput, create_metric
from benchmark.metrics.background import SSIM_K1, SSIM_K2, gaussian_kernel_1d

TOLERANCE = {"l2_bg": 1e-6, "psnr_bg": 1e-4, "ssim_bg": 1e-5}


def make_samples(n: int, size: int, seed: int = 0) -> list[tuple[Image.Image, Image.Image, np.ndarray]]:
    """(output, source, edit mask): a smooth random source, the output = source + noise everywhere
    and a repainted box (the "edit"), a box mask around it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    samples = []
    for _ in range(n):
        phase = rng.uniform(0, 6.28, 3)
        src = np.stack([127 + 100 * np.sin(6 * xx + 4 * yy + p) for p in phase], axis=-1)
        src = np.clip(src + rng.normal(0, 8, src.shape), 0, 255).astype(np.uint8)
        out = np.clip(src + rng.normal(0, 4, src.shape), 0, 255).astype(np.uint8)
        h, w = rng.integers(size // 8, size // 2, 2)
        top, left = rng.integers(0, size - h), rng.integers(0, size - w)
        mask = np.zeros((size, size), np.uint8)
        mask[top : top + h, left : left + w] = 1
        out[mask == 1] = rng.integers(0, 256, 3, dtype=np.uint8)
        samples.append((Image.fromarray(out), Image.fromarray(src), mask))
    return samples


# --------------------------------------------------------------------------------------------
# per-image loop, MagicBrush style


def _to_tensor(image):
    """torchvision's ToTensor for an RGB PIL image or HxWx3 uint8 array: -> CxHxW float in [0, 1]."""
    import torch

    if isinstance(image, np.ndarray):
        return torch.from_numpy(image.transpose(2, 0, 1)).contiguous().float().div(255)
    arr = torch.from_numpy(np.array(image, copy=True))
    return arr.view(image.size[1], image.size[0], 3).permute(2, 0, 1).contiguous().float().div(255)


def _pair(out, src):
    """MagicBrush's read: the output resized to the source's size (PIL), then both as tensors.
    Arrays are already at the source's size here, so they skip the resize."""
    if isinstance(out, Image.Image):
        out = out.convert("RGB").resize(src.size)
        src = src.convert("RGB")
    return _to_tensor(out), _to_tensor(src)


def loop_l2(samples) -> list[float]:
    import torch

    criterion = torch.nn.MSELoss(reduction="none")
    scores = []
    for out, src, mask in samples:
        a, b = _pair(out, src)
        bg = torch.from_numpy(mask == 0)
        sq = criterion(a, b)  # 3 x H x W
        scores.append(sq[:, bg].mean().detach().cpu().numpy().item())
    return scores


def loop_psnr(samples) -> list[float]:
    return [min(100.0, -10.0 * math.log10(max(mse, 1e-10))) for mse in loop_l2(samples)]


def loop_ssim(samples) -> list[float]:
    import torch
    import torch.nn.functional as F

    k = torch.from_numpy(gaussian_kernel_1d()).float()
    win = torch.outer(k, k)[None, None].repeat(3, 1, 1, 1)  # one 11x11 window per channel
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    scores = []
    for out, src, mask in samples:
        x, y = (t[None] for t in _pair(out, src))

        def blur(t):
            return F.conv2d(t, win, groups=3)

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        bg = torch.from_numpy(mask[5:-5, 5:-5] == 0)
        scores.append(smap[0][:, bg].mean().item())
    return scores


# --------------------------------------------------------------------------------------------
# ours


def batched(name: str, batch_size: int) -> Callable[[list[MetricInput]], list[float]]:
    def run(inputs: list[MetricInput]) -> list[float]:
        metric = create_metric(name)
        values: list[float] = []
        for start in range(0, len(inputs), batch_size):
            values.extend(metric.update(inputs[start : start + batch_size])[name])
        return values

    return run


def time_best(
    fn: Callable[[object], list[float]], setup: Callable[[], object], repeat: int
) -> tuple[float, list[float]]:
    """Best wall time of fn(setup()) over `repeat` runs; setup is not timed."""
    best, values = math.inf, []
    for _ in range(repeat):
        arg = setup()
        t0 = time.perf_counter()
        values = fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best, values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="samples per update() call on our side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--metrics", default="l2_bg,psnr_bg,ssim_bg")
    parser.add_argument("--inputs", default="pil,array", help="pil: PIL images; array: decoded uint8 arrays")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    pil_samples = make_samples(args.samples, args.size)
    inputs = {
        "pil": pil_samples,
        "array": [(np.array(o), np.array(s), m) for o, s, m in pil_samples],
    }
    loops = {"l2_bg": loop_l2, "psnr_bg": loop_psnr, "ssim_bg": loop_ssim}

    rows, failed = [], False
    for name in [m.strip() for m in args.metrics.split(",") if m.strip()]:
        for kind in [k.strip() for k in args.inputs.split(",") if k.strip()]:
            samples = inputs[kind]
            t_loop, ref = time_best(loops[name], lambda: samples, args.repeat)
            # fresh MetricInputs for every run, so that no array cached by an earlier run is reused
            t_ours, got = time_best(
                batched(name, args.batch_size),
                lambda: [MetricInput(output=o, source=s, edit_mask=m) for o, s, m in samples],
                args.repeat,
            )
            diff = float(np.max(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(ref, dtype=np.float64))))
            ok = diff <= TOLERANCE[name]
            failed |= not ok
            rows.append((name, kind, args.samples / t_loop, args.samples / t_ours, t_loop / t_ours, diff, ok))

    print(f"\n{args.samples} samples of {args.size}x{args.size}, torch threads {args.threads}, "
          f"best of {args.repeat} runs, {args.batch_size} samples per update()\n")
    print("| metric | inputs | per-image loop (samples/s) | ours (samples/s) | speed-up | max abs diff |")
    print("|---|---|---:|---:|---:|---:|")
    for name, kind, loop_sps, ours_sps, ratio, diff, ok in rows:
        flag = "" if ok else " FAIL"
        print(f"| {name} | {kind} | {loop_sps:,.0f} | {ours_sps:,.0f} | {ratio:.1f}x | {diff:.1e}{flag} |")
    if failed:
        print("\nvalues differ beyond the tolerance:", TOLERANCE)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
