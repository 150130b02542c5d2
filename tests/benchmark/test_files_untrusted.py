"""Run folders, submissions and datasets come from other people: the leaderboard, `rie-bench score`
and dataset reading open only files inside the folder they were given (no '..', no absolute path
elsewhere, no link out), and no image over the pixel limit, each refused with a message naming the
run or submission and the sample."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.leaderboard import load_runs, render_html
from benchmark.run.dataset import open_selection
from benchmark.run.folder import output_name
from benchmark.runner import RunConfig, run_benchmark
from refcoco_edit.errors import DataError
from refcoco_edit.imaging.files import OutsideFolderError
from tests.images import bomb_png
from tests.refcoco_edit.test_files_untrusted import huge_png

METRICS = "l2_bg"


@pytest.fixture(scope="module")
def made_run(bench_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("untrusted") / "identity"
    run_benchmark(RunConfig(method="identity", dataset=str(bench_dataset), out=out, metrics=METRICS, progress=False))
    return out


@pytest.fixture
def run(made_run, tmp_path) -> Path:
    """A fresh copy of the run folder, to tamper with."""
    copy = tmp_path / "downloaded" / "run"
    shutil.copytree(made_run, copy)
    return copy


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def _set_output(folder: Path, index: int, value: str) -> str:
    rows = _rows(folder)
    rows[index]["output"] = value
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows[index]["sample_id"]


def _embedded(page: str) -> list[np.ndarray]:
    found = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in found]


def _outside_image(tmp_path: Path) -> Path:
    path = tmp_path / "private.png"
    Image.new("RGB", (40, 30), (250, 0, 250)).save(path)
    return path


# ---------------------------------------------------------------------------- leaderboard
@pytest.mark.parametrize("kind", ["dotdot", "absolute_passwd", "absolute_image", "symlink"])
def test_the_leaderboard_refuses_outputs_outside_the_run_folder(run, tmp_path, kind, capsys):
    from benchmark.cli import main

    private = _outside_image(tmp_path)
    sid = _rows(run)[0]["sample_id"]
    if kind == "dotdot":
        _set_output(run, 0, "../../../../../../../../etc/passwd")
    elif kind == "absolute_passwd":
        _set_output(run, 0, "/etc/passwd")
    elif kind == "absolute_image":
        _set_output(run, 0, str(private))
    else:
        link = run / "outputs" / f"{output_name(sid)}.png"
        link.unlink()
        os.symlink(private, link)
    with pytest.raises(OutsideFolderError, match=rf"run {re.escape(str(run))}, sample {re.escape(sid)}: .*outside"):
        render_html(load_runs([run]), grid=6)
    page = tmp_path / "board.html"
    assert main(["leaderboard", str(run), "--format", "html", "--out", str(page), "--grid", "6"]) == 2
    err = capsys.readouterr().err
    assert f"sample {sid}" in err and "outside" in err and str(run) in err and "Traceback" not in err
    assert not page.exists()


def test_a_moved_run_reads_its_own_outputs_never_the_recorded_ones(made_run, tmp_path):
    """samples.jsonl records absolute paths; a copy of the folder reads its own outputs/ even while the
    recorded files still exist elsewhere (here made purple), and an in-folder path is used as is."""
    moved = tmp_path / "moved"
    shutil.copytree(made_run, moved)
    old = Path(_rows(moved)[0]["output"])
    assert old.is_file() and not old.is_relative_to(moved)
    original = old.read_bytes()
    try:
        Image.new("RGB", Image.open(old).size, (250, 0, 250)).save(old)
        board = load_runs([moved])
        path = board[0].output_path(board[0].rows()[0])
        assert path == (moved / "outputs" / old.name).resolve()
        cells = _embedded(render_html(board, grid=6))
        assert cells and not any((c == [250, 0, 250]).all(axis=-1).any() for c in cells)
    finally:
        old.write_bytes(original)
    _set_output(moved, 0, f"outputs/{old.name}")  # relative to the folder
    assert load_runs([moved])[0].output_path(_rows(moved)[0]) == (moved / "outputs" / old.name).resolve()


def test_the_leaderboard_refuses_a_huge_output_naming_it(run, tmp_path, capsys):
    from benchmark.cli import main

    sid = _rows(run)[0]["sample_id"]
    (run / "outputs" / f"{output_name(sid)}.png").write_bytes(huge_png())
    with pytest.raises(DataError, match=rf"run .*, sample {re.escape(sid)}: output .*over the (pixel )?limit"):
        render_html(load_runs([run]), grid=6)
    assert main(["leaderboard", str(run), "--format", "html", "--out", str(tmp_path / "b.html"), "--grid", "6"]) == 2
    err = capsys.readouterr().err
    assert sid in err and "limit" in err and "Traceback" not in err


def test_run_files_that_link_out_of_the_folder_are_refused(run, tmp_path):
    (run / "samples.jsonl").unlink()
    os.symlink("/etc/passwd", run / "samples.jsonl")
    with pytest.raises(OutsideFolderError, match="samples.jsonl"):
        render_html(load_runs([run]), grid=2)
    elsewhere = tmp_path / "results.json"
    shutil.move(run / "results.json", elsewhere)
    os.symlink(elsewhere, run / "results.json")
    with pytest.raises(OutsideFolderError, match="results.json"):
        load_runs([run])


def test_the_grid_source_column_comes_only_from_a_matching_local_dataset(run, bench_dataset, tmp_path, caplog):
    """The dataset a run names is shown only when it holds the samples the run scored: a run folder
    never makes the leaderboard download a dataset or show a folder it merely names."""
    results = json.loads((run / "results.json").read_text())
    assert len(_embedded(render_html(load_runs([run]), grid=2))) == 2 * 2  # source + output
    for source in ("someone/hub-dataset", str(tmp_path)):
        results["dataset"]["source"] = source
        (run / "results.json").write_text(json.dumps(results))
        assert len(_embedded(render_html(load_runs([run]), grid=2))) == 2  # outputs only
    assert "not a local folder" in caplog.text and "cannot be read" in caplog.text
    results["dataset"]["source"] = str(bench_dataset)
    results["dataset"]["fingerprint"] = "0" * 64  # another dataset in the same place
    (run / "results.json").write_text(json.dumps(results))
    assert len(_embedded(render_html(load_runs([run]), grid=2))) == 2
    assert "fingerprints differ" in caplog.text
    assert len(_embedded(render_html(load_runs([run]), grid=2, dataset=str(bench_dataset)))) == 4  # the user's


def test_a_resumed_run_replaces_links_out_and_huge_outputs(run, bench_dataset, tmp_path):
    """A cached output that links out of the folder or is over the pixel limit is not reused: it is
    generated again, which replaces the link (the file it pointed to is left alone)."""
    private = _outside_image(tmp_path)
    before = private.read_bytes()
    rows = _rows(run)
    linked = run / "outputs" / f"{output_name(rows[0]['sample_id'])}.png"
    linked.unlink()
    os.symlink(private, linked)
    (run / "outputs" / f"{output_name(rows[1]['sample_id'])}.png").write_bytes(huge_png())
    again = run_benchmark(RunConfig(method="identity", dataset=str(bench_dataset), out=run, metrics=METRICS,
                                    progress=False))
    assert (again.generated, again.cached) == (2, len(rows) - 2)
    assert not linked.is_symlink() and Image.open(linked).mode == "RGB" and private.read_bytes() == before


# ---------------------------------------------------------------------------- rie-bench score
def _submission(made_run: Path, tmp_path: Path) -> Path:
    sub = tmp_path / "submission"
    shutil.copytree(made_run / "outputs", sub)
    return sub


def test_score_refuses_a_huge_output_from_its_header(made_run, bench_dataset, tmp_path, capsys):
    """A 12000x9000 RGB PNG of a few hundred bytes (its source is 4:3 too, so it would be resized and
    scored) is refused by validation, naming the file, before any pixel is decoded."""
    from benchmark.cli import main

    sub = _submission(made_run, tmp_path)
    sid = _rows(made_run)[0]["sample_id"]
    data = bomb_png(12000, 9000)
    assert len(data) < 100_000
    (sub / f"{output_name(sid)}.png").write_bytes(data)
    rc = main(["score", "--pred", str(sub), "--dataset", str(bench_dataset), "--metrics", METRICS, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert re.search(rf"{re.escape(output_name(sid))}\.png: cannot be read \(output: image .*over the (pixel )?limit",
                     err)
    assert not (sub / "results.json").exists()


def test_score_refuses_links_out_of_the_submission(made_run, bench_dataset, tmp_path, capsys):
    from benchmark.cli import main

    sub = _submission(made_run, tmp_path)
    sid = _rows(made_run)[1]["sample_id"]
    target = sub / f"{output_name(sid)}.png"
    shutil.move(target, tmp_path / "kept-elsewhere.png")  # the right picture, but outside the folder
    os.symlink(tmp_path / "kept-elsewhere.png", target)
    rc = main(["score", "--pred", str(sub), "--dataset", str(bench_dataset), "--metrics", METRICS, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"sample {sid}: path" in err and "leads outside" in err
    # a run folder whose outputs/ links elsewhere
    folder = tmp_path / "as-run"
    folder.mkdir()
    os.symlink(_submission(made_run, tmp_path / "b"), folder / "outputs")
    rc = main(["score", "--pred", str(folder), "--dataset", str(bench_dataset), "--metrics", METRICS,
               "--out", str(tmp_path / "scores"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "outputs" in err and "leads outside" in err


# ---------------------------------------------------------------------------- datasets
@pytest.fixture
def huge_dataset(bench_dataset, tmp_path) -> tuple[Path, str]:
    """The bench dataset with one source image replaced by a 12000x9000 PNG of a few kilobytes."""
    import datasets

    from refcoco_edit.dataset.io import load_refcoco_edit

    loaded = load_refcoco_edit(str(bench_dataset))
    split = next(iter(loaded.keys()))
    ds = loaded[split].cast_column("source_image", datasets.Image(decode=False))
    sid = ds[0]["sample_id"]
    data = huge_png()

    def swap(row, index):
        if index == 0:
            row["source_image"] = {"bytes": data, "path": None}
        return row

    folder = tmp_path / "huge-dataset"
    datasets.DatasetDict({split: ds.map(swap, with_indices=True)}).save_to_disk(str(folder))
    return folder, sid


def test_dataset_reading_refuses_a_huge_image(huge_dataset):
    folder, sid = huge_dataset
    selection = open_selection(str(folder))
    with pytest.raises(DataError, match=rf"sample {re.escape(sid)}: source_image: image .*over the (pixel )?limit"):
        selection.source_sizes()
    with pytest.raises(DataError, match=rf"sample {re.escape(sid)}: source_image: image .*over the (pixel )?limit"):
        selection.sample(0)
    assert selection.sample(1).source_image.mode == "RGB"


def test_score_and_leaderboard_on_a_dataset_with_a_huge_image(huge_dataset, made_run, tmp_path, capsys, caplog):
    from benchmark.cli import main

    folder, sid = huge_dataset
    sub = _submission(made_run, tmp_path)
    rc = main(["score", "--pred", str(sub), "--dataset", str(folder), "--metrics", METRICS, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and sid in err and "limit" in err and "Traceback" not in err
    # the leaderboard's source column leaves that sample's source out, with a note
    board = load_runs([made_run])
    ids = [r["sample_id"] for r in board[0].rows()]
    from benchmark.leaderboard import grid_cells

    labels, rows = grid_cells(board, ids[:2], dataset=str(folder))
    assert labels[0] == "source" and rows[0][2][0] is None and rows[1][2][0] is not None
    assert f"source of sample {sid} not shown" in caplog.text
