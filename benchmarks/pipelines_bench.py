"""Benchmark: the reference-edit pipelines with the tiny models.

Three tables, printed as Markdown:

1. Each pipeline at each size (square images, a centred square mask of a quarter of the area): time
   per candidate of a one-candidate call (minimum and median of the timed calls after one warm-up
   call: at least --repeat, more for cheap configurations, see `rounds`) and peak memory.
   Each pipeline runs in its own child process, sizes ascending. Memory on the CPU is the
   resident set size (RSS, from /proc/self/statm; tracemalloc does not see torch's allocations):
   "peak MB" is the process's high-water mark (ru_maxrss: interpreter, libraries, model and all calls
   so far; sizes run ascending, so it is the peak at that size); "call peak MB" is the highest RSS
   sampled every 2 ms during the size's calls (warm-up included) minus the RSS just before them: what
   the calls themselves add. On CUDA both columns are torch.cuda.max_memory_allocated, reset before
   the size's calls.
2. `region_edit` against diffusers' `StableDiffusionInpaintPipeline` on the same 4-channel components:
   with a 4-channel UNet it runs exactly the latent-blending loop (`strength` = 1 - skip). Both make
   the same number of candidates with the same steps; ours includes its background restore and edit
   mask. Calls are interleaved (ours, theirs, ours, ...); target: within 10%.
3. `region_edit` with K=4 candidates in one batched call against 4 one-candidate calls (interleaved);
   target: the batched call at least 1.5x faster.

Ratios are taken between the minima of the interleaved repeats: on a machine shared with other work
(the 2-core development machine) the minimum is the least-disturbed run, while medians swing with the
neighbours' load; medians are printed too.

Fewer steps than the pipelines' default 50 keep the run short (--steps, 10 by default): the time per
step does not depend on the number of steps, so the ratios hold; the absolute times scale linearly.

    python benchmarks/pipelines_bench.py [--sizes 64,256,512] [--steps 10] [--repeat 3]
        [--compare-sizes 64,256] [--batch-sizes 64,256] [--device cpu] [--threads N] [--tables 1,2,3]
        [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

PIPELINES = {
    "region_edit": "tiny-sd15",
    "inpaint": "tiny-sd-inpaint",
    "composition": "tiny-paint-by-example",
    "classical_inpaint": None,
}
PROMPT = "a red apple on a wooden table"


def make_inputs(size: int):
    """A smooth synthetic picture, a centred square mask (a quarter of the area) and an example crop."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rgb = np.dstack([127 + 100 * np.sin(xx / (size / 9)), 127 + 100 * np.cos(yy / (size / 7)),
                     np.where((xx - 0.3 * size) ** 2 + (yy - 0.7 * size) ** 2 < (size / 6) ** 2, 220, 40)])
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    example = image.crop((0, size // 2, size // 2, size))
    return image, mask, example


def generate_kwargs(name: str, size: int, steps: int, num: int = 1, seed: int = 0) -> dict:
    """The call of pipeline `name`, from its class's declared capabilities (a text where it needs one,
    an example image where it needs one; each class keeps the sampling options it understands)."""
    from refcoco_edit.pipelines import pipeline_class
    from refcoco_edit.pipelines.capabilities import EditRequest

    image, mask, example = make_inputs(size)
    cls = pipeline_class(name)
    request = EditRequest(num=num, seed=seed, steps=steps, text=PROMPT if cls.needs_text else None,
                          example=example if cls.needs_example else None)
    return {"image": image, "mask": mask, **cls.generate_kwargs(request)}


# --------------------------------------------------------------------------------------------
# memory


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


class RssSampler:
    """The highest RSS seen every `interval` seconds while running (a background thread)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# --------------------------------------------------------------------------------------------
# table 1: one child process per pipeline


def child(name: str, sizes: list[int], steps: int, repeat: int, device: str) -> list[dict]:
    import torch

    from refcoco_edit.pipelines import get_pipeline

    cuda = device.startswith("cuda")
    pipe = get_pipeline(name, PIPELINES[name], device=device, progress=False)
    rows = []
    for size in sizes:
        kw = generate_kwargs(name, size, steps)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        before = rss_bytes()
        times = []
        with RssSampler() as sampler:
            pipe.generate(**kw)  # warm-up (first-call allocations, kernel selection): not timed
            for _ in rounds(repeat):
                t0 = time.perf_counter()
                pipe.generate(**kw)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        row = {"pipeline": name, "model": PIPELINES[name] or "opencv", "size": size,
               "s_per_candidate": statistics.median(times), "min_s": min(times)}
        if cuda:
            row["call_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            row["peak_mb"] = row["call_peak_mb"]
        else:
            row["call_peak_mb"] = (sampler.peak - before) / 2**20
            row["peak_mb"] = max_rss_bytes() / 2**20
        rows.append(row)
    return rows


def run_children(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in PIPELINES:
        cmd = [sys.executable, __file__, "--child", name, "--sizes", args.sizes, "--steps", str(args.steps),
               "--repeat", str(args.repeat), "--device", args.device, "--min-seconds", str(args.min_seconds)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"child {name} failed:\n{out.stderr[-3000:]}")
        rows += json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {name} done", file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# tables 2 and 3: region_edit in this process


MIN_SECONDS = 3.0  # keep repeating cheap configurations until this much time is spent ...
MAX_ROUNDS = 25  # ... but not more rounds than this


def rounds(repeat: int):
    """At least `repeat` rounds; more (up to MAX_ROUNDS) while less than MIN_SECONDS have passed, so
    that cheap configurations get enough samples for a stable minimum on a busy machine."""
    start = time.perf_counter()
    i = 0
    while i < repeat or (i < MAX_ROUNDS and time.perf_counter() - start < MIN_SECONDS):
        yield i
        i += 1


def _timed(fn, sync) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def compare_with_diffusers(sizes: list[int], steps: int, repeat: int, device: str, nums=(1, 4)) -> list[dict]:
    import diffusers
    import torch

    from refcoco_edit.models import resolver as models
    from refcoco_edit.pipelines.base import resolve_dtype
    from refcoco_edit.pipelines.region_edit import RegionEditPipeline

    dtype = resolve_dtype(device)
    sd = models.load_pretrained("tiny-sd15", diffusers.StableDiffusionPipeline.from_pretrained).to(device, dtype)
    ours = RegionEditPipeline("tiny-sd15", device=device, dtype=dtype, progress=False, pipe=sd)
    theirs = diffusers.StableDiffusionInpaintPipeline(**sd.components)
    theirs.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    for size in sizes:
        from PIL import Image

        image, mask, _ = make_inputs(size)
        mask_image = Image.fromarray(mask * 255)
        for num in nums:
            def run_ours():
                ours.generate(image, mask, text=PROMPT, num=num, seed=0, steps=steps)

            def run_theirs():
                gens = [torch.Generator().manual_seed(i) for i in range(num)]
                theirs(PROMPT, image=image, mask_image=mask_image, height=size, width=size, strength=0.75,
                       num_inference_steps=steps, guidance_scale=7.5, num_images_per_prompt=num, generator=gens)

            run_ours(), run_theirs()  # warm-up
            t_ours, t_theirs = [], []
            for _ in rounds(repeat):
                t_ours.append(_timed(run_ours, sync))
                t_theirs.append(_timed(run_theirs, sync))
            a, b = min(t_ours), min(t_theirs)
            rows.append({"size": size, "num": num, "ours_s": a, "diffusers_s": b, "overhead": a / b - 1,
                         "ours_med": statistics.median(t_ours), "diffusers_med": statistics.median(t_theirs)})
    return rows


def batched_vs_single(sizes: list[int], steps: int, repeat: int, device: str, k: int = 4) -> list[dict]:
    import torch

    from refcoco_edit.pipelines import get_pipeline

    pipe = get_pipeline("region_edit", "tiny-sd15", device=device, progress=False)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    for size in sizes:
        image, mask, _ = make_inputs(size)

        def batched():
            pipe.generate(image, mask, text=PROMPT, num=k, seed=0, steps=steps)

        def singles():
            for i in range(k):
                pipe.generate(image, mask, text=PROMPT, num=1, seed=i, steps=steps)

        batched()  # warm-up at this size (the single calls' shapes are warmed by table 2 / their first run)
        singles()
        t_b, t_s = [], []
        for _ in rounds(repeat):
            t_b.append(_timed(batched, sync))
            t_s.append(_timed(singles, sync))
        a, b = min(t_b), min(t_s)
        rows.append({"size": size, "k": k, "batched_s": a, "singles_s": b, "speedup": b / a,
                     "batched_med": statistics.median(t_b), "singles_med": statistics.median(t_s)})
    return rows


# --------------------------------------------------------------------------------------------
# report


def markdown(rows1: list[dict], rows2: list[dict], rows3: list[dict], args: argparse.Namespace) -> str:
    import platform

    import torch

    lines = [
        f"Pipelines with tiny models, {args.steps} steps, device {args.device}, torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}; >= {args.repeat} timed calls (>= {MIN_SECONDS:.0f} s, <= {MAX_ROUNDS}) "
        "after a warm-up; times as min / median.",
        "",
        "| pipeline | model | size | s / candidate (K=1), min / median | call peak MB | peak MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows1:
        lines.append(f"| {r['pipeline']} | {r['model']} | {r['size']} | "
                     f"{r['min_s']:.3f} / {r['s_per_candidate']:.3f} | "
                     f"{r['call_peak_mb']:.0f} | {r['peak_mb']:.0f} |")
    if not rows1:
        lines = lines[:2]
    if rows2:
        lines += ["", "region_edit vs diffusers' StableDiffusionInpaintPipeline latent-blending path (4-channel UNet, "
                  "same components, skip 0.25 = strength 0.75); target: overhead within 10%", "",
                  "| size | K | ours s (min / median) | diffusers s (min / median) | overhead (mins) |",
                  "|---|---|---|---|---|"]
        for r in rows2:
            ok = "ok" if r["overhead"] <= 0.10 else "MISSED"
            lines.append(f"| {r['size']} | {r['num']} | {r['ours_s']:.3f} / {r['ours_med']:.3f} | "
                         f"{r['diffusers_s']:.3f} / {r['diffusers_med']:.3f} | "
                         f"{100 * r['overhead']:+.1f}% ({ok}) |")
    if rows3:
        lines += ["", "region_edit: K candidates in one batched call vs K one-candidate calls; target >= 1.5x", "",
                  "| size | K | batched s (min / median) | K single calls s (min / median) | speed-up (mins) |",
                  "|---|---|---|---|---|"]
        for r in rows3:
            ok = "ok" if r["speedup"] >= 1.5 else "MISSED"
            lines.append(f"| {r['size']} | {r['k']} | {r['batched_s']:.3f} / {r['batched_med']:.3f} | "
                         f"{r['singles_s']:.3f} / {r['singles_med']:.3f} | "
                         f"{r['speedup']:.2f}x ({ok}) |")
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64,256,512")
    p.add_argument("--compare-sizes", default="64,256")
    p.add_argument("--batch-sizes", default="64,256")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--tables", default="1,2,3", help="which tables to make (default 1,2,3)")
    p.add_argument("--min-seconds", type=float, default=3.0,
                   help="repeat cheap configurations until this long (default 3; 0: exactly --repeat)")
    p.add_argument("--out", type=Path, help="also write the Markdown here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    globals()["MIN_SECONDS"] = args.min_seconds
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    if args.child:
        print(json.dumps(child(args.child, _ints(args.sizes), args.steps, args.repeat, args.device)))
        return 0
    tables = set(_ints(args.tables))
    rows1 = rows2 = rows3 = []
    if 1 in tables:
        print("table 1: pipelines x sizes", file=sys.stderr, flush=True)
        rows1 = run_children(args)
    if 2 in tables:
        print("table 2: region_edit vs diffusers", file=sys.stderr, flush=True)
        rows2 = compare_with_diffusers(_ints(args.compare_sizes), args.steps, args.repeat, args.device)
    if 3 in tables:
        print("table 3: batched vs single", file=sys.stderr, flush=True)
        rows3 = batched_vs_single(_ints(args.batch_sizes), args.steps, args.repeat, args.device)
    text = markdown(rows1, rows2, rows3, args)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
