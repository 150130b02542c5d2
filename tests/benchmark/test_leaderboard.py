"""Leaderboards: arrows, intervals and best marks in Markdown / HTML / JSON, the notes on metrics no run
could compute and on runs that do not compare, and the HTML grid of the same samples across methods."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from benchmark.leaderboard import (
    choose_grid_samples,
    format_value,
    leaderboard_dict,
    load_runs,
    render_html,
    render_json,
    render_markdown,
)
from benchmark.runner import RunConfig, run_benchmark
from refcoco_edit.errors import InputError

METRICS = "aesthetic,l2_bg,localisation"


@pytest.fixture(scope="module")
def runs(bench_dataset, tmp_path_factory):
    """identity, reference and the stamp test method, scored without weights (aesthetic unavailable)."""
    import os

    root = tmp_path_factory.mktemp("board")
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("REFCOCO_EDIT_MODEL_")}
    config_env = os.environ.get("REFCOCO_EDIT_CONFIG")
    os.environ["REFCOCO_EDIT_CONFIG"] = str(root / "absent.yaml")
    folders = []
    try:
        for method in ("identity", "reference", "tests.benchmark.stub_methods:StampMethod"):
            out = root / method.rsplit(":", 1)[-1].lower()
            config = RunConfig(method=method, dataset=str(bench_dataset), out=out, metrics=METRICS, progress=False)
            run_benchmark(config)
            folders.append(out)
    finally:
        os.environ.update(saved)
        if config_env is None:
            os.environ.pop("REFCOCO_EDIT_CONFIG")
        else:
            os.environ["REFCOCO_EDIT_CONFIG"] = config_env
    return folders


def test_values_are_formatted_to_four_significant_digits():
    assert [format_value(v) for v in (None, 0.0, 0.012345, 25.3456, 1.0, 0.00012)] == [
        "n/a", "0", "0.01235", "25.35", "1", "1.200e-04"]


def test_markdown_has_arrows_intervals_best_marks_and_notes(runs):
    text = render_markdown(load_runs(runs))
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert "l2_bg ↓" in header and "loc_iou ↑" in header and "aesthetic" not in header
    assert "`aesthetic` not shown:" in text and "REFCOCO_EDIT_MODEL_AESTHETIC" in text
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    row = {line.split("|")[1].strip(): line for line in lines}
    cells = [c.strip() for c in row["reference"].split("|")[1:-1]]
    names = [c.strip() for c in header.split("|")[1:-1]]
    assert cells[names.index("loc_iou ↑")].startswith("**1** [1, 1]")
    assert cells[names.index("l2_bg ↓")].startswith("**0**")  # every run keeps the background: all bold
    assert "**0**" in row["identity"] and "**1**" not in row["identity"].split("|")[names.index("loc_iou ↑") + 1]
    assert re.search(r"\| stamp \| 6 \|", text)
    assert "## By edit type" in text and "| remove | reference |" in text
    assert "warning" not in text


def test_runs_on_different_samples_are_flagged(runs, bench_dataset, tmp_path):
    other = tmp_path / "fewer"
    run_benchmark(RunConfig(method="identity", dataset=str(bench_dataset), out=other, metrics=METRICS, limit=3,
                            progress=False, label="identity-3"))
    text = render_markdown(load_runs([runs[0], other]))
    assert "warning**: runs were scored on different samples" in text


def test_json_lists_columns_runs_and_best(runs):
    data = json.loads(render_json(load_runs(runs)))
    assert data == leaderboard_dict(load_runs(runs))
    assert data["schema"] == "rie-bench/leaderboard/v1"
    assert {c["name"]: c["higher_is_better"] for c in data["columns"]} == {
        "l2_bg": False, "loc_precision": True, "loc_recall": True, "loc_iou": True}
    assert data["best"]["loc_iou"] == ["reference"]
    assert sorted(data["best"]["l2_bg"]) == ["identity", "reference", "stamp"]  # all keep the background
    assert [r["label"] for r in data["runs"]] == ["identity", "reference", "stamp"]
    assert data["runs"][1]["metrics"]["loc_iou"]["value"] == 1.0
    assert "aesthetic" in data["not_shown"]


def _data_images(page: str) -> list[Image.Image]:
    found = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in found]


def test_html_embeds_a_grid_of_the_same_samples_across_methods(runs, bench_dataset):
    board = load_runs(runs)
    ids = choose_grid_samples(board, 3)
    assert len(ids) == 3
    edit_types = {json.loads(line)["sample_id"]: json.loads(line)["edit_type"]
                  for line in (runs[0] / "samples.jsonl").read_text().splitlines()}
    assert {edit_types[i] for i in ids} == {"replace", "remove", "attribute"}  # edit types in turn
    page = render_html(board, grid=3)
    assert page.startswith("<!DOCTYPE html>") and "l2_bg ↓" in page and "class='best'" in page
    images = _data_images(page)
    assert len(images) == 3 * 4  # three samples x (source + three runs)
    assert "<th>source</th><th>identity</th><th>reference</th><th>stamp</th>" in page
    # the reference column shows the reference output of that sample, pixel for pixel (no resize at 256 px)
    first = ids[0]
    with Image.open(runs[1] / "outputs" / f"{first}.png") as im:
        np.testing.assert_array_equal(np.asarray(images[2].convert("RGB")), np.asarray(im.convert("RGB")))
    assert first in page


def test_html_can_link_images_written_beside_it(runs, tmp_path):
    html_path = tmp_path / "site" / "board.html"
    page = render_html(load_runs(runs), grid=2, image_dir=tmp_path / "site" / "img", html_path=html_path)
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) == 2 * 4 and all(s.startswith("img/") for s in srcs)
    for src in srcs:
        with Image.open(tmp_path / "site" / src) as im:
            assert im.mode == "RGB"


def test_leaderboard_cli_writes_every_format(runs, tmp_path, capsys):
    from benchmark.cli import main

    argv = ["leaderboard", *map(str, runs), "--format", "html", "--out", str(tmp_path / "b.html"), "--grid", "2"]
    assert main(argv) == 0
    assert len(_data_images((tmp_path / "b.html").read_text())) == 8
    assert main(["leaderboard", *map(str, runs), "--out", str(tmp_path / "b.md")]) == 0
    md = (tmp_path / "b.md").read_text()
    assert "![samples across methods](b_grid.png)" in md
    with Image.open(tmp_path / "b_grid.png") as grid:
        assert grid.width > 4 * 200
    capsys.readouterr()
    assert main(["leaderboard", *map(str, runs), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["loc_iou"] == ["reference"]
    # run folders on both sides of an option, as users type them
    assert main(["leaderboard", str(runs[0]), "--format", "json", *map(str, runs[1:])]) == 0
    assert [r["label"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["identity", "reference", "stamp"]
    assert main(["leaderboard", str(tmp_path / "nothing-here")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_repeated_labels_are_told_apart(runs, bench_dataset, tmp_path):
    other = tmp_path / "again"
    run_benchmark(RunConfig(method="identity", dataset=str(bench_dataset), out=other, metrics="l2_bg", progress=False))
    assert [r.label for r in load_runs([runs[0], other, runs[1]])] == [
        "identity [identity]", "identity [again]", "reference"]
    assert [r.label for r in load_runs([runs[0], runs[0]])] == ["identity [identity] #1", "identity [identity] #2"]
    with pytest.raises(InputError):
        load_runs([])


def test_image_grid_rows_are_as_tall_as_their_pictures():
    """The leaderboard's PNG grid (`viz.image_grid`): 4:3 pictures get 4:3 cells, not squares."""
    from refcoco_edit.imaging.viz import image_grid

    wide = Image.new("RGB", (400, 300), (200, 10, 10))
    tall = Image.new("RGB", (300, 400), (10, 200, 10))
    grid = image_grid([[wide, wide], [wide, None], [tall, wide]], cell=100, pad=4)
    # rows: 75 px (two 100x75 thumbs), 75 px, 100 px (the tall one); pads between and around
    assert grid.size == (4 + 2 * 104, 75 + 75 + 100 + 4 * 4)
    px = np.asarray(grid)
    assert tuple(px[4 + 74, 4 + 50]) == (200, 10, 10) and tuple(px[4 + 75, 4 + 50]) == (255, 255, 255)
    assert tuple(px[4 + 75 + 4, 4 + 50]) == (200, 10, 10)  # the second row starts right below the first
    with pytest.raises(ValueError, match="at least one row"):
        image_grid([])


def test_results_carry_each_metric_version_and_a_changed_metric_is_flagged(runs, bench_dataset, tmp_path,
                                                                          monkeypatch):
    from benchmark.metrics.localisation import Localisation

    first = json.loads((runs[0] / "results.json").read_text())["metrics"]
    assert {name: entry["version"] for name, entry in first.items()} == {
        "aesthetic": 1, "l2_bg": 1, "loc_precision": 1, "loc_recall": 1, "loc_iou": 1}
    assert "version" not in render_markdown(load_runs(runs))  # same versions: no warning
    monkeypatch.setattr(Localisation, "version", 2)  # the metric's definition changed since the first runs
    newer = tmp_path / "newer"
    run_benchmark(RunConfig(method="identity", dataset=str(bench_dataset), out=newer, metrics=METRICS,
                            progress=False, label="identity-new"))
    metrics = json.loads((newer / "results.json").read_text())["metrics"]
    assert metrics["loc_iou"]["version"] == 2 and metrics["l2_bg"]["version"] == 1
    text = render_markdown(load_runs([runs[0], newer]))
    assert "runs scored loc_iou with different versions of the metric (identity v1, identity-new v2)" in text
    assert "l2_bg with different versions" not in text
    # a results file from before versions were recorded counts as version 1
    old = json.loads((runs[1] / "results.json").read_text())
    for entry in old["metrics"].values():
        entry.pop("version")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "results.json").write_text(json.dumps(old))
    (legacy / "samples.jsonl").write_text((runs[1] / "samples.jsonl").read_text())
    assert "different versions" not in render_markdown(load_runs([runs[0], legacy]))
    assert leaderboard_dict(load_runs([runs[0], newer]))["runs"][1]["metrics"]["loc_iou"]["version"] == 2
