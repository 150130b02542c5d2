"""Benchmark: the annotation store under one writer and under 8 concurrent writer processes.

Each writer process opens its own `Store` and, started together at a barrier:
1. insert: adds N samples (two random RGB images of SIZE x SIZE, two masks) with work keys;
2. update: changes each of its own samples once (`get_sample` + `update_sample`, no conflicts
   possible, so this measures waiting for SQLite's single write lock);
3. hot update: N/4 increments of one sample shared by all writers, retried on `ConflictError`
   (latency is from the first try to the success; the conflicts column counts the retries).
Rates are all operations of all writers over the phase's wall time; p50/p95 are per operation.
Run for both `synchronous` settings: FULL (`durable=True`, the default: fsync per commit and image)
and NORMAL (survives process crashes, not power cuts).

    python benchmarks/store_bench.py [--writers 1,8] [--n 200] [--size 64] [--sync full,normal] [--out DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT = "replace the cat on the left with a dog"


def make_sample(seed: int, size: int):
    from PIL import Image

    from refcoco_edit.schema import Sample

    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 8: size // 2, size // 4: 3 * size // 4] = 1
    return Sample(sample_id="", image_id=seed, ref_id=seed, ann_id=seed, split="train",
                  source_image=Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                  edited_image=Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                  source_mask=mask, edit_mask=mask.copy(), prompt=PROMPT, referring_text="the cat on the left",
                  edit_text="replace with a dog", referring_spans=[[8, 27]], edit_spans=[[0, 7], [28, 38]],
                  edit_type="replace", target="dog", pipeline="composition", generation={"count": 0},
                  status="candidate")


def writer(db: str, wid: int, n: int, size: int, durable: bool, hot_id: str, barrier) -> dict:
    from refcoco_edit.store import ConflictError, Store

    samples = [make_sample(wid * 1_000_000 + i, size) for i in range(n)]  # made before the clock starts
    out: dict = {}
    with Store.open(db, create=False, durable=durable) as store:
        barrier.wait()
        lat, ids, t0 = [], [], time.perf_counter()
        for i, s in enumerate(samples):
            t = time.perf_counter()
            ids.append(store.add_sample(s, user=f"w{wid}", key=f"w{wid}:{i}"))
            lat.append(time.perf_counter() - t)
        out["insert"] = (t0, time.perf_counter(), lat, 0)
        barrier.wait()
        lat, t0 = [], time.perf_counter()
        for sid in ids:
            t = time.perf_counter()
            rec = store.get_sample(sid, images=False)
            store.update_sample(sid, {"target": "wolf", "annotator": f"w{wid}"}, rec.version, f"w{wid}")
            lat.append(time.perf_counter() - t)
        out["update"] = (t0, time.perf_counter(), lat, 0)
        barrier.wait()
        lat, conflicts, t0 = [], 0, time.perf_counter()
        for _ in range(max(1, n // 4)):
            t = time.perf_counter()
            while True:
                rec = store.get_sample(hot_id, images=False)
                gen = {"count": rec.sample.generation["count"] + 1}
                try:
                    store.update_sample(hot_id, {"generation": gen}, rec.version, f"w{wid}")
                    break
                except ConflictError:
                    conflicts += 1
            lat.append(time.perf_counter() - t)
        out["hot update"] = (t0, time.perf_counter(), lat, conflicts)
    return out


def run_case(root: Path, writers: int, n: int, size: int, durable: bool) -> tuple[list[dict], int]:
    from refcoco_edit.store import Store

    db = root / f"bench-{writers}-{'full' if durable else 'normal'}.sqlite"
    with Store.open(db, durable=durable) as store:
        hot_id = store.add_sample(make_sample(-1 % 2**31, size), user="setup")
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(writers)
        with ctx.Pool(writers) as pool:
            results = pool.starmap(writer, [(str(db), w, n, size, durable, hot_id, barrier) for w in range(writers)])
    rows = []
    for op in ("insert", "update", "hot update"):
        start = min(r[op][0] for r in results)
        end = max(r[op][1] for r in results)
        lat = sorted(x for r in results for x in r[op][2])
        rows.append({"sync": "FULL" if durable else "NORMAL", "writers": writers, "op": op, "ops": len(lat),
                     "wall_s": end - start, "rate": len(lat) / (end - start),
                     "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
                     "conflicts": sum(r[op][3] for r in results)})
    with Store.open(db, create=False) as store:
        expected = writers * max(1, n // 4)
        got = store.get_sample(hot_id, images=False).sample.generation["count"]
        assert got == expected, f"lost updates: hot counter {got}, expected {expected}"
        assert store.count() == writers * n + 1
    return rows, writers * max(1, n // 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", default="1,8", help="comma-separated writer process counts")
    ap.add_argument("--n", type=int, default=200, help="samples each writer inserts (and updates)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--sync", default="full,normal", help="full (durable, default) and/or normal")
    ap.add_argument("--out", type=Path, help="folder for the stores (default: a temporary one)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for sync in args.sync.split(","):
            for w in (int(x) for x in args.writers.split(",")):
                case_rows, _ = run_case(root, w, args.n, args.size, durable=sync.strip() == "full")
                rows += case_rows
    print(f"store benchmark: {args.n} samples per writer, {args.size}x{args.size} images, "
          f"{mp.cpu_count()} CPU(s); every run checked: no lost update, every insert stored\n")
    print("| sync | writers | operation | ops | wall s | ops/s | p50 ms | p95 ms | conflicts (retries) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sync']} | {r['writers']} | {r['op']} | {r['ops']} | {r['wall_s']:.2f} | {r['rate']:.0f} | "
              f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['conflicts']} |")


if __name__ == "__main__":
    main()
