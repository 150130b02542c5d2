"""Benchmark: `export_store` rows per second and peak memory at 1,000 and 10,000 samples.

One store holds the largest count of synthetic samples (SIZE x SIZE images; only a few distinct
pictures, so the store's blobs dedupe and building it is quick; every sample has its own masks,
split, edit type and pipeline). The first N of them are `accepted` and the rest `candidate`, so
exporting status `accepted` gives N rows and `accepted,candidate` all of them from the same store.

Each export runs in a fresh child process, which reports:
- rows/s: rows over the wall time of `export_store` (validation, parquet shards, card, and with
  `save_to_disk` also the DIR/hf copy that `datasets` makes from the parquet files);
- peak RSS: the child's `ru_maxrss` (resource.getrusage; the high-water mark of resident memory,
  imports included), and `base`: its resident memory (VmRSS) just before the export starts, after
  importing datasets/pyarrow, so `peak - base` is what the export itself needed.
Memory is flat when `peak - base` does not grow with N.

    python benchmarks/export_bench.py [--counts 1000,10000] [--size 64] [--images 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "testA", "testB")
PROMPT = "replace the cat on the left with a dog"


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_store(path: Path, total: int, accepted: int, size: int, images: int) -> float:
    from PIL import Image

    from refcoco_edit.schema import EDIT_TYPES, PIPELINES, Sample
    from refcoco_edit.store import Store

    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(images)]
    t0 = time.perf_counter()
    with Store.open(path, durable=False) as store:
        for i in range(total):
            y0, x0 = int(rng.integers(0, size // 2)), int(rng.integers(0, size // 2))
            h, w = int(rng.integers(4, size // 2)), int(rng.integers(4, size // 2))
            mask = np.zeros((size, size), np.uint8)
            mask[y0:y0 + h, x0:x0 + w] = 1
            edit = mask.copy()
            edit[max(0, y0 - 2):y0 + h + 2, max(0, x0 - 2):x0 + w + 2] = 1
            s = Sample(sample_id="", image_id=i, ref_id=i, ann_id=i, split=SPLITS[i % len(SPLITS)],
                       source_image=pics[i % images], edited_image=pics[(i + 1) % images], source_mask=mask,
                       edit_mask=edit, prompt=PROMPT, referring_text="the cat on the left",
                       edit_text="replace with a dog", referring_spans=[[8, 27]], edit_spans=[[0, 7], [28, 38]],
                       edit_type=EDIT_TYPES[i % len(EDIT_TYPES)], target="dog",
                       pipeline=PIPELINES[i % len(PIPELINES)], generation={"seed": i},
                       annotator=f"a{i % 7}", status="accepted" if i < accepted else "candidate")
            store.add_sample(s, user="bench", key=f"b:{i}")
    return time.perf_counter() - t0


def child(args: argparse.Namespace) -> None:
    """Run one export and print its measurements as JSON (run in a fresh process)."""
    import datasets  # noqa: F401 - imported before the baseline, as the export needs it
    import pyarrow.parquet  # noqa: F401

    from refcoco_edit.dataset.export import export_store

    base = vm_rss_mb()
    t0 = time.perf_counter()
    summary = export_store(args.store, args.child_out, statuses=args.statuses.split(","),
                           save_to_disk=args.save_to_disk, shard_size=1000)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"rows": summary.rows, "seconds": secs, "base_mb": base, "peak_mb": peak,
                      "parquet_mb": summary.download_size / 1e6}))


def run_child(store: Path, out: Path, statuses: str, save_to_disk: bool) -> dict:
    cmd = [sys.executable, __file__, "--child-out", str(out), "--store", str(store), "--statuses", statuses]
    if save_to_disk:
        cmd.append("--save-to-disk")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--images", type=int, default=4, help="distinct pictures (blobs dedupe)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--statuses", default="accepted", help=argparse.SUPPRESS)
    ap.add_argument("--save-to-disk", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_out:
        child(args)
        return
    counts = sorted(int(c) for c in args.counts.split(","))
    if len(counts) > 2:
        raise SystemExit("give one or two counts (the smaller is the accepted share of one store)")
    with tempfile.TemporaryDirectory(dir=args.out) as work:
        work = Path(work)
        store = work / "bench.sqlite"
        build = make_store(store, counts[-1], counts[0], args.size, args.images)
        print(f"store: {counts[-1]} samples of {args.size}x{args.size} in {build:.1f} s "
              f"({counts[-1] / build:.0f} inserts/s)")
        print("| samples | save_to_disk | seconds | rows/s | base RSS MB | peak RSS MB | peak - base MB | parquet MB |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for n in counts:
            statuses = "accepted" if n == counts[0] and len(counts) > 1 else "accepted,candidate"
            for std in (False, True):
                out = work / f"out-{n}-{int(std)}"
                r = run_child(store, out, statuses, std)
                assert r["rows"] == n, r
                print(f"| {n} | {'yes' if std else 'no'} | {r['seconds']:.1f} | {n / r['seconds']:.0f} | "
                      f"{r['base_mb']:.0f} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['base_mb']:.0f} | "
                      f"{r['parquet_mb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
