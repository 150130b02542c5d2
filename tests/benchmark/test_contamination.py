"""Contamination: a run of a checkpoint whose training manifest holds evaluation pictures records the
overlap in results.json (count and ids, by id and by pixel hash) and warns; the leaderboard marks the
run in text, Markdown, HTML and JSON; a clean manifest gives no mark; a ReferDiffusion checkpoint
without a manifest is recorded as unchecked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmark.leaderboard import leaderboard_dict, load_runs, render_html, render_markdown
from benchmark.leaderboard.text import format_results_table
from benchmark.run.runner import RunConfig, run_benchmark
from refcoco_edit.dataset.synth import picture_hash
from refcoco_edit.refer.reader import RefCOCO
from referdiffusion.train.manifest import MANIFEST, MANIFEST_SCHEMA
from tests.benchmark.stub_methods import StampMethod


class CheckpointStamp(StampMethod):
    """The stamp method, as if it ran the checkpoint folder `checkpoint` (what `config()["model"]` names)."""

    def __init__(self, checkpoint: Path, **kw: Any) -> None:
        super().__init__(**kw)
        self.checkpoint = checkpoint

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model": str(self.checkpoint), "size": 512}


def _evaluation_pictures(dataset: Path) -> dict[int, int]:
    """{image_id: samples} of the benchmark dataset, read from its parquet files."""
    import datasets

    ds = datasets.load_dataset(str(dataset), split=None)
    counts: dict[int, int] = {}
    for split in ds.values():
        for i in split["image_id"]:
            counts[int(i)] = counts.get(int(i), 0) + 1
    return counts


def _hash(image_id: int) -> str:
    """The picture's pixel hash from the RefShapes files (independent of the exported copy)."""
    return picture_hash(np.asarray(RefCOCO.load("sample").load_image(image_id).convert("RGB")))


def _checkpoint(folder: Path, pictures: dict[int, str | None], size: int = 512) -> Path:
    folder.mkdir(parents=True)
    (folder / "rem").mkdir()
    manifest = {"schema": MANIFEST_SCHEMA, "preprocess": {"resize": "aspect", "size": size}, "stages": [],
                "pictures": {str(k): v for k, v in pictures.items()}}
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def _run(dataset: Path, out: Path, checkpoint: Path) -> dict[str, Any]:
    config = RunConfig(method="stamp", dataset=str(dataset), out=out, metrics="l2_bg", progress=False,
                       label=out.name)
    return run_benchmark(config, method=CheckpointStamp(checkpoint)).results


def test_overlap_is_recorded_warned_and_marked(bench_dataset, tmp_path, caplog):
    counts = _evaluation_pictures(bench_dataset)
    seen = sorted(counts)[0]
    ckpt = _checkpoint(tmp_path / "ckpt", {seen: _hash(seen), 424242: "0" * 64})
    with caplog.at_level("WARNING"):
        results = _run(bench_dataset, tmp_path / "dirty", ckpt)
    record = results["contamination"]
    assert record["checked"] and record["count"] == 1 and record["image_ids"] == [seen]
    assert record["by_id"] == [seen] and record["by_hash"] == [seen]  # the exported source pixels hash the same
    assert record["samples"] == counts[seen] and record["training_pictures"] == 2
    assert record["evaluation_pictures"] == len(counts) and record["protocol"]["same"]
    assert json.loads((tmp_path / "dirty" / "results.json").read_text())["contamination"] == record
    assert "trained on 1 of the" in caplog.text and f"image ids {seen}" in caplog.text
    assert f"warning: the model was trained on 1 of the {len(counts)}" in format_results_table(results)

    # the same picture under an unrelated id is found by its pixels
    renamed = _run(bench_dataset, tmp_path / "renamed", _checkpoint(tmp_path / "ckpt2", {10**9: _hash(seen)}))
    found = renamed["contamination"]
    assert (found["count"], found["by_id"], found["by_hash"]) == (1, [], [seen])

    clean = _run(bench_dataset, tmp_path / "clean", _checkpoint(tmp_path / "other", {424242: "0" * 64}))
    assert clean["contamination"]["count"] == 0 and clean["contamination"]["image_ids"] == []
    assert "warning" not in format_results_table(clean)

    board = load_runs([tmp_path / "dirty", tmp_path / "clean"])
    md = render_markdown(board)
    assert "| dirty † | 6 |" in md and "| clean | 6 |" in md
    assert f"trained on evaluation data**: † dirty: trained on 1 of the {len(counts)}" in md
    page = render_html(board, grid=0)
    assert page.count("<tr class='contaminated'") == 1 and "<td>dirty †</td>" in page
    assert "trained on evaluation data: † dirty" in page
    data = leaderboard_dict(board)
    assert [r["contaminated"] for r in data["runs"]] == [True, False]


def test_unchecked_checkpoint_and_protocol_mismatch(bench_dataset, tmp_path, caplog):
    bare = tmp_path / "bare"
    (bare / "rem").mkdir(parents=True)
    results = _run(bench_dataset, tmp_path / "r1", bare)
    assert results["contamination"]["checked"] is False and MANIFEST in results["contamination"]["reason"]
    assert "not checked for training on evaluation pictures" in render_markdown(load_runs([tmp_path / "r1"]))
    with caplog.at_level("WARNING"):
        other = _run(bench_dataset, tmp_path / "r2", _checkpoint(tmp_path / "c480", {}, size=480))
    assert other["contamination"]["protocol"]["same"] is False
    assert "trained at" in caplog.text


@pytest.mark.parametrize("model", [None, "ip2p"])
def test_methods_without_a_checkpoint_folder_record_nothing(bench_dataset, tmp_path, model):
    from benchmark.run.provenance import training_overlap

    assert training_overlap({"model": model}, None, 512) is None


def test_a_model_named_through_the_resolver_is_checked_in_its_folder(tmp_path):
    from benchmark.run.provenance import training_overlap

    folder = tmp_path / "named"
    (folder / "rem").mkdir(parents=True)
    record = training_overlap({"model": "refshapes-rem", "model_folder": str(folder)}, None, 64)
    assert record is not None and record["checked"] is False and str(folder) in record["reason"]
