"""The main job, end to end, on the bundled RefShapes sample (what `make demo` runs).

Stages, each a call of the same Python API the CLIs use:
1. read the sample (REFER layout) and count it;
2. `build` a RefCOCO-Edit store: exact ground-truth edits (`synthetic`) and OpenCV removals
   (`classical_inpaint`), accepted by the `oracle` policy; no model weights needed;
3. `export` the accepted samples as a Hugging Face dataset (parquet + save_to_disk + card);
4. score methods on it with the benchmark runner and write a leaderboard;
5. draw an overview picture: sources with the referred object outlined, and their reference edits.

Rerunning resumes: the store skips finished work, the runner reuses cached outputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# (run name, method, options, run settings): the copy baseline, the dataset's own edits (an upper bound),
# the two-stage baseline with RefShapes' parser as the referring segmenter and OpenCV removal (none needs
# weights), and the two editors trained here on RefShapes that ship in the package (the study's fine-tune
# row through InstructPix2Pix's pipeline, on the prompt as trained; and the full ReferDiffusion row), each
# at the size it was trained at, with the study's 20 sampling steps.
DEMO_METHODS: tuple[tuple[str, str, dict, dict], ...] = (
    ("identity", "identity", {}, {}),
    ("reference", "reference", {}, {}),
    ("seg_inpaint", "seg_inpaint", {"segmenter": "refshapes", "inpainter": "classical_inpaint"}, {}),
    ("refshapes-ip2p", "ip2p", {}, {"method_model": "refshapes-ip2p", "steps": 20}),
    ("refshapes-referdiffusion", "referdiffusion", {}, {"method_model": "refshapes-referdiffusion", "steps": 20}),
)
DEMO_SPLIT = "testB"  # 48 samples: enough for confidence intervals, quick to score


def run_demo(out: Path, n_refs: int = 6,
             methods: tuple[tuple[str, str, dict, dict], ...] = DEMO_METHODS) -> dict[str, Any]:
    """Run every stage into `out` and return a summary of what each made."""
    from refcoco_edit.curation.build import BuildConfig, build
    from refcoco_edit.dataset.export import export_store
    from refcoco_edit.refer.reader import RefCOCO
    from refcoco_edit.store import Store

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"out": str(out)}

    log.info("1/5 reading the RefShapes sample")
    data = RefCOCO.load("sample")
    summary["dataset"] = data.stats()

    log.info("2/5 building RefCOCO-Edit into %s", out / "store.db")
    config = BuildConfig(pipelines=("synthetic", "classical_inpaint"), auto_accept="oracle").check()
    with Store.open(out / "store.db", durable=False) as store:
        built = build(data, store, config, progress=True)
        summary["build"] = {k: v for k, v in built.to_dict().items() if k != "failures"}
        summary["store"] = store.stats()

    log.info("3/5 exporting accepted samples to %s", out / "dataset")
    exported = export_store(out / "store.db", out / "dataset", overwrite=True, progress=True)
    summary["export"] = {"rows": exported.rows, "splits": exported.splits, "path": str(out / "dataset")}

    log.info("4/5 scoring %s on the %s split", ", ".join(m[0] for m in methods), DEMO_SPLIT)
    summary["benchmark"] = _score(out, methods)

    log.info("5/5 drawing %s", out / "overview.png")
    _overview(data, n_refs).save(out / "overview.png")
    summary["pictures"] = [str(out / "overview.png")] + summary["benchmark"].get("pictures", [])
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _score(out: Path, methods: tuple[tuple[str, str, dict, dict], ...]) -> dict[str, Any]:
    """Run the benchmark for each method on the exported dataset, then the leaderboard (Markdown and HTML)."""
    from benchmark.cli import main as rie_bench
    from benchmark.runner import RunConfig, run_benchmark

    runs, results = [], {}
    for name, method, options, settings in methods:
        run_dir = out / "runs" / name
        done = run_benchmark(RunConfig(method=method, method_options=dict(options), dataset=str(out / "dataset"),
                                       out=run_dir, split=DEMO_SPLIT, label=name, **settings,
                                       metrics=["l2_bg", "psnr_bg", "ssim_bg", "localisation", "fg_agreement"]
                                       ).check())
        results[name] = {k: v.get("value") for k, v in (done.results or {}).get("metrics", {}).items()}
        runs.append(str(run_dir))
    board = out / "leaderboard"
    for fmt in ("md", "html"):
        if rie_bench(["leaderboard", *runs, "--format", fmt, "--out", str(board.with_suffix("." + fmt))]) != 0:
            raise RuntimeError(f"leaderboard ({fmt}) failed")
    return {"results": results, "leaderboard": [str(board.with_suffix(".md")), str(board.with_suffix(".html"))],
            "pictures": [str(board.parent / "leaderboard_grid.png"), str(board.with_suffix(".html"))]}


def _overview(data, n_refs: int):
    """A grid: each row a ref (source with the object outlined), then its exact reference edits."""
    from refcoco_edit.curation.build import GroundTruth
    from refcoco_edit.imaging.viz import image_grid, overlay_mask

    gt = GroundTruth.find(data)
    rows, labels = [], []
    for ref_id in data.ref_ids()[:n_refs]:
        ref = data.ref(ref_id)
        row = [overlay_mask(data.load_image(ref["image_id"]), data.mask(ref_id))]
        for edit_type in ("replace", "remove", "attribute"):
            rec = gt.edit(ref_id, edit_type)
            row.append(gt.edited_image(rec))
        rows.append(row)
        labels.append(ref["sentences"][0]["sent"][:28])
    return image_grid(rows, row_labels=labels, col_labels=["source + referred object", "replace", "remove",
                                                           "recolour"], cell=192)
