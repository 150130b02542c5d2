"""Benchmark: loading and indexing a full-size RefCOCO (the synthetic RefShapes set at RefCOCO's scale).

Measures, in one run, our `RefCOCO` indexes against a straightforward dict-append implementation of
the same indexes (the REFER API's approach): index build time, listing all refs by split, decoding
1,000 masks, and peak Python memory (tracemalloc) relative to the loaded JSON + refs.

    python benchmarks/refer_index.py [--root DIR] [--images 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import time
import tracemalloc
from pathlib import Path

from refcoco_edit.refer.reader import RefCOCO, decode_segmentation, load_json
from refcoco_edit.refer.safe_pickle import safe_load


def reference_index(refs: list[dict], instances: dict) -> dict:
    """REFER's createIndex, with setdefault/append instead of its list concatenation."""
    anns, imgs, cats, img_to_anns = {}, {}, {}, {}
    for ann in instances["annotations"]:
        anns[ann["id"]] = ann
        img_to_anns.setdefault(ann["image_id"], []).append(ann)
    for img in instances["images"]:
        imgs[img["id"]] = img
    for cat in instances["categories"]:
        cats[cat["id"]] = cat["name"]
    refs_by_id, img_to_refs, ref_to_ann, ann_to_ref, cat_to_refs = {}, {}, {}, {}, {}
    sents, sent_to_ref, sent_to_tokens = {}, {}, {}
    for ref in refs:
        refs_by_id[ref["ref_id"]] = ref
        img_to_refs.setdefault(ref["image_id"], []).append(ref)
        cat_to_refs.setdefault(ref["category_id"], []).append(ref)
        ref_to_ann[ref["ref_id"]] = anns[ref["ann_id"]]
        ann_to_ref[ref["ann_id"]] = ref
        for sent in ref["sentences"]:
            sents[sent["sent_id"]] = sent
            sent_to_ref[sent["sent_id"]] = ref
            sent_to_tokens[sent["sent_id"]] = sent["tokens"]
    return {"refs": refs_by_id, "anns": anns, "imgs": imgs, "cats": cats, "img_to_anns": img_to_anns,
            "img_to_refs": img_to_refs, "ref_to_ann": ref_to_ann, "ann_to_ref": ann_to_ref,
            "cat_to_refs": cat_to_refs, "sents": sents, "sent_to_ref": sent_to_ref, "sent_to_tokens": sent_to_tokens}


def reference_refs_by_split(refs: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for ref in refs:
        out.setdefault(ref["split"], []).append(ref["ref_id"])
    return out


def reference_masks(index: dict, ref_ids: list[int]) -> int:
    total = 0
    for rid in ref_ids:
        ann = index["ref_to_ann"][rid]
        img = index["imgs"][ann["image_id"]]
        total += int(decode_segmentation(ann["segmentation"], img["height"], img["width"]).sum())
    return total


def ours_build(refs: list[dict], instances: dict) -> RefCOCO:
    return RefCOCO("refshapes", "unc", refs, instances["annotations"], instances["images"], instances["categories"])


def ours_workload(data: RefCOCO, ref_ids: list[int]) -> tuple[dict, int]:
    by_split = {s: data.ref_ids(split=s) for s in data.splits}
    return by_split, sum(int(data.mask(r).sum()) for r in ref_ids)


def timed(fn, repeat: int) -> tuple[float, object]:
    """Best of `repeat` runs: the least disturbed by other work on the machine."""
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def peak_memory(fn) -> int:
    """Peak bytes allocated by `fn` above what was allocated before it (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    result = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del result
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("bench_out/refshapes_full"))
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--masks", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    ds = args.root / "refshapes"
    if not (ds / "instances.json").is_file():
        from refcoco_edit.refshapes import generate

        print(f"generating the full-size synthetic set in {args.root} ...")
        generate(args.root, num_images=args.images, seed=0, write_images=False, progress=True)

    load = lambda: (safe_load(ds / "refs(unc).p"), load_json(ds / "instances.json", "instances"))  # noqa: E731
    t_load, (refs, instances) = timed(load, 1)
    t_pickle_ref, _ = timed(lambda: pickle.loads((ds / "refs(unc).p").read_bytes(), encoding="latin1"), 3)
    t_pickle_our, _ = timed(lambda: safe_load(ds / "refs(unc).p"), 3)
    tracemalloc.start()
    held = load()
    loaded_bytes = tracemalloc.get_traced_memory()[0]  # what the loaded JSON + refs occupy
    tracemalloc.stop()
    del held

    data = ours_build(refs, instances)
    print(f"data: {len(instances['images'])} images, {len(instances['annotations'])} annotations, "
          f"{len(refs)} refs, {data.stats()['sentences']} sentences; load {t_load:.2f} s; "
          f"loaded JSON + refs hold {loaded_bytes / 2**20:.1f} MiB")
    ref_ids = data.ref_ids()[:: max(1, len(refs) // args.masks)][: args.masks]

    t_ref_build, ref_index = timed(lambda: reference_index(refs, instances), args.repeat)
    t_our_build, data = timed(lambda: ours_build(refs, instances), args.repeat)
    t_ref_split, ref_split = timed(lambda: reference_refs_by_split(refs), args.repeat)
    t_our_split, our_split = timed(lambda: {s: data.ref_ids(split=s) for s in data.splits}, args.repeat)
    assert {k: v for k, v in our_split.items()} == ref_split, "refs by split differ"
    t_ref_mask, ref_pixels = timed(lambda: reference_masks(ref_index, ref_ids), 1)
    t_our_mask, our_pixels = timed(lambda: sum(int(data.mask(r).sum()) for r in ref_ids), 1)
    assert ref_pixels == our_pixels, "masks differ"

    mem_ref = peak_memory(lambda: (reference_index(refs, instances), reference_refs_by_split(refs)))
    mem_our = peak_memory(lambda: ours_workload(ours_build(refs, instances), ref_ids[:50]))

    rows = [
        ("load refs pickle (reference: unrestricted pickle.load)", t_pickle_ref, t_pickle_our),
        ("index build", t_ref_build, t_our_build),
        ("all refs by split", t_ref_split, t_our_split),
        (f"decode {len(ref_ids)} masks", t_ref_mask, t_our_mask),
        ("total of the workload after loading", t_ref_build + t_ref_split + t_ref_mask,
         t_our_build + t_our_split + t_our_mask),
    ]
    print()
    print("| step | dict-append reference (s) | refcoco_edit (s) | speed-up |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:.4f} | {b:.4f} | {a / b:.2f}x |")
    print()
    print("| memory | dict-append reference | refcoco_edit |")
    print("|---|---:|---:|")
    print(f"| loaded JSON + refs (MiB) | {loaded_bytes / 2**20:.1f} | {loaded_bytes / 2**20:.1f} |")
    print(f"| index peak above loaded data (MiB) | {mem_ref / 2**20:.1f} | {mem_our / 2**20:.1f} |")
    print(f"| peak of load + index, over loaded data | {(loaded_bytes + mem_ref) / loaded_bytes:.2f}x "
          f"| {(loaded_bytes + mem_our) / loaded_bytes:.2f}x |")
    print(json.dumps({"index_speedup": t_ref_build / t_our_build,
                      "peak_over_loaded": (loaded_bytes + mem_our) / loaded_bytes}))


if __name__ == "__main__":
    main()
