"""Export: store -> parquet + save_to_disk + card; `datasets.load_dataset(DIR)` gives back every field
exactly; bad rows are refused by name and leave nothing behind; the Hub upload is wired."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from refcoco_edit.cli import main
from refcoco_edit.dataset.card import FIELD_DOCS
from refcoco_edit.dataset.export import DatasetWriter, ExportRefusedError, export_store
from refcoco_edit.dataset.io import (
    SampleView,
    decode_mask,
    encode_mask_png,
    load_refcoco_edit,
    row_to_sample,
    sample_to_row,
)
from refcoco_edit.errors import InputError
from refcoco_edit.schema import EDIT_TYPES, PIPELINES, Sample, features
from refcoco_edit.store import Store, rle
from tests.refcoco_edit.store_worker import make_sample

N_EDITS = 12  # RefShapes edits put in the store (replace/remove/attribute, several splits)


# ---------------------------------------------------------------------------- fixtures
def refshapes_samples(n: int = N_EDITS) -> list[Sample]:
    """Samples with RefShapes' exact reference edits and template prompts (spans exact)."""
    from refcoco_edit.refer.reader import RefCOCO
    from refcoco_edit.refshapes import sample_root
    from refcoco_edit.text.prompts import prompt_for_ref

    data = RefCOCO.load("sample")
    meta = json.loads((sample_root() / "refshapes" / "edits.json").read_text())
    # spread over the splits: take edits in turn from each split
    by_split: dict[str, list[dict]] = {}
    for e in meta["edits"]:
        by_split.setdefault(data.ref(e["ref_id"])["split"], []).append(e)
    chosen: list[dict] = []
    while len(chosen) < n and any(by_split.values()):
        for edits in by_split.values():
            if edits and len(chosen) < n:
                chosen.append(edits.pop(0))
    out = []
    for i, e in enumerate(chosen):
        ref = data.ref(e["ref_id"])
        p = prompt_for_ref(data, e["ref_id"], e["edit_type"], e["target"] or None, seed=i)
        edited = Image.open(sample_root() / "refshapes" / e["edited_file"]).convert("RGB")
        out.append(Sample(
            sample_id="", image_id=ref["image_id"], ref_id=e["ref_id"], ann_id=e["ann_id"], split=ref["split"],
            source_image=data.load_image(ref["image_id"]), edited_image=edited, source_mask=data.mask(e["ref_id"]),
            edit_mask=rle.decode(e["edit_mask"]), prompt=p.prompt, referring_text=p.referring_text,
            edit_text=p.edit_text, referring_spans=p.referring_spans, edit_spans=p.edit_spans,
            edit_type=e["edit_type"], target=p.target, pipeline=PIPELINES[i % len(PIPELINES)],
            generation={"edit_id": e["edit_id"], "params": e["params"], "seed": i}, annotator=f"ann{i % 3}",
            reviewer="rev" if i % 2 else "", status="accepted"))
    return out


@pytest.fixture(scope="module")
def shapes() -> list[Sample]:
    return refshapes_samples()


@pytest.fixture()
def store_path(tmp_path: Path, shapes: list[Sample]) -> Path:
    path = tmp_path / "s.sqlite"
    with Store.open(path, durable=False) as store:
        for i, s in enumerate(shapes):
            store.add_sample(s, user="build", key=f"edit:{i}")
        # not exported by default: another status
        store.add_sample(make_sample(99, status="candidate", size=24), user="build", key="cand")
    return path


def store_samples(path: Path, status: str = "accepted") -> dict[str, Sample]:
    with Store.open(path, create=False) as store:
        return {r.sample.sample_id: r.sample for r in store.list_samples(status=status)}


def assert_row_is_sample(row: dict, want: Sample, feats) -> None:
    """Every field of a decoded dataset row equals the store's sample (checked independently of
    dataset_io: masks read as 0/255 pixels, labels through the dataset's own ClassLabel)."""
    for name in Sample.field_names():
        got = row[name]
        exp = getattr(want, name)
        if name in ("source_image", "edited_image"):
            assert got.size == exp.size and got.mode == exp.mode, name
            np.testing.assert_array_equal(np.asarray(got), np.asarray(exp), err_msg=name)
        elif name in ("source_mask", "edit_mask"):
            px = np.asarray(got)
            assert got.mode == "L" and set(np.unique(px)) <= {0, 255}, name
            np.testing.assert_array_equal(px // 255, exp, err_msg=name)
        elif name in ("edit_type", "pipeline"):
            assert feats[name].int2str(got) == exp, name
        elif name == "generation":
            assert json.loads(got) == exp
        else:
            assert got == exp, name


# ---------------------------------------------------------------------------- round trip
def test_load_dataset_reads_every_field_of_every_row(tmp_path: Path, store_path: Path) -> None:
    import datasets

    out = tmp_path / "ds"
    summary = export_store(store_path, out, shard_size=2, row_group_size=1)
    want = store_samples(store_path)
    assert summary.rows == len(want) == N_EDITS

    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    by_split: dict[str, int] = {}
    for s in want.values():
        by_split[s.split] = by_split.get(s.split, 0) + 1
    assert {k: len(v) for k, v in ds.items()} == by_split == summary.splits
    assert len(by_split) >= 3  # RefShapes' train/val/testA/testB
    seen = set()
    for split, d in ds.items():
        assert d.features == features()
        for row in d:
            assert row["split"] == split
            assert_row_is_sample(row, want[row["sample_id"]], d.features)
            seen.add(row["sample_id"])
    assert seen == set(want)

    # the save_to_disk copy holds the same rows
    disk = datasets.load_from_disk(str(out / "hf"))
    assert set(disk) == set(ds)
    for _split, d in disk.items():
        for row in d:
            assert_row_is_sample(row, want[row["sample_id"]], d.features)


def test_parquet_layout_shards_and_row_groups(tmp_path: Path, store_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "ds"
    summary = export_store(store_path, out, shard_size=2, row_group_size=1, save_to_disk=False)
    assert not (out / "hf").exists()
    names = sorted(p.name for p in (out / "data").iterdir())
    assert names == sorted(Path(f).name for f in summary.files)
    for split, n in summary.splits.items():
        files = sorted(p for p in (out / "data").glob(f"{split}-*.parquet"))
        shards = -(-n // 2)
        assert [p.name for p in files] == [f"{split}-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)]
        rows = 0
        for p in files:
            meta = pq.ParquetFile(p).metadata
            assert all(meta.row_group(i).num_rows == 1 for i in range(meta.num_row_groups))
            rows += meta.num_rows
        assert rows == n
    # no temporary files left
    assert not list(tmp_path.glob("ds.export-*"))
    assert not list((out / "data").glob("*.partial"))


def test_dataset_io_loader_gives_samples(tmp_path: Path, store_path: Path) -> None:
    out = tmp_path / "ds"
    export_store(store_path, out)
    want = store_samples(store_path)
    dd = load_refcoco_edit(out)  # the hf/ copy
    split = next(iter(dd))
    view = SampleView(load_refcoco_edit(out, split=split))
    assert len(view) == len(dd[split])
    for got in view:
        exp = want[got.sample_id]
        for name in Sample.field_names():
            g, e = getattr(got, name), getattr(exp, name)
            if name in ("source_image", "edited_image"):
                np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
            elif name in ("source_mask", "edit_mask"):
                assert g.dtype == np.uint8
                np.testing.assert_array_equal(g, e)
            else:
                assert g == e, name
    with pytest.raises(InputError):
        load_refcoco_edit(out, split="nope")


def test_row_round_trip_and_masks_are_0_255_pngs() -> None:
    s = make_sample(3, status="accepted", size=20, edit_type="attribute", pipeline="inpaint")
    row = sample_to_row(s)
    mask_png = Image.open(__import__("io").BytesIO(row["edit_mask"]["bytes"]))
    assert mask_png.mode == "L" and set(np.unique(np.asarray(mask_png))) == {0, 255}
    back = row_to_sample(features().encode_example(row))
    assert back.edit_type == "attribute" and back.pipeline == "inpaint"
    np.testing.assert_array_equal(back.source_mask, s.source_mask)
    np.testing.assert_array_equal(np.asarray(back.source_image), np.asarray(s.source_image))
    assert back.generation == s.generation and back.referring_spans == s.referring_spans
    np.testing.assert_array_equal(decode_mask(encode_mask_png(np.eye(4, dtype=np.uint8))), np.eye(4, dtype=np.uint8))


# ---------------------------------------------------------------------------- card
def test_card_yaml_matches_the_data_and_documents_every_field(tmp_path: Path, store_path: Path) -> None:
    from datasets import Features

    out = tmp_path / "ds"
    summary = export_store(store_path, out)
    text = (out / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert Features._from_yaml_list(header["dataset_info"]["features"]) == features()
    splits = {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]}
    assert splits == summary.splits
    (config,) = header["configs"]
    for df in config["data_files"]:
        assert list(out.glob(df["path"])), df
    assert set(features()) <= set(FIELD_DOCS)
    for name in features():
        assert f"`{name}`" in text
    # statistics per edit type and pipeline: the table rows carry the store's counts
    want = store_samples(store_path)
    for et in EDIT_TYPES:
        n = sum(s.edit_type == et for s in want.values())
        if n:
            assert re.search(rf"^\| {et} \|.*\| {n} \|$", text, re.M), et
    for pl in PIPELINES:
        n = sum(s.pipeline == pl for s in want.values())
        if n:
            assert re.search(rf"^\| {pl} \|.*\| {n} \|$", text, re.M), pl
    assert "## Licence" in text and "@inproceedings" in text and "How it was built" in text


# ---------------------------------------------------------------------------- refusals
def _drafts(path: Path) -> dict[str, str]:
    """A store of drafts (drafts are not validated on the way in): two bad, one good; ids by role."""
    ids = {}
    with Store.open(path, durable=False) as store:
        ids["good"] = store.add_sample(make_sample(1, status="draft"), user="t")
        bad_spans = make_sample(2, status="draft")
        bad_spans.referring_spans = [[0, 5]]
        ids["spans"] = store.add_sample(bad_spans, user="t")
        bad_mask = make_sample(3, status="draft")
        bad_mask.edit_mask = np.ones((5, 5), np.uint8)
        ids["mask"] = store.add_sample(bad_mask, user="t")
    return ids


def test_bad_rows_are_refused_by_name_and_nothing_is_written(tmp_path: Path) -> None:
    ids = _drafts(tmp_path / "s.sqlite")
    out = tmp_path / "ds"
    with pytest.raises(ExportRefusedError) as err:
        export_store(tmp_path / "s.sqlite", out, statuses=["draft"])
    problems = dict(err.value.problems)
    assert set(problems) == {ids["spans"], ids["mask"]}
    assert any("referring spans" in p for p in problems[ids["spans"]])
    assert any("edit_mask has shape (5, 5)" in p for p in problems[ids["mask"]])
    assert ids["spans"] in str(err.value) and ids["mask"] in str(err.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ds")]  # no temporary folder either


def test_a_row_whose_background_differs_from_the_source_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Store.open(path, durable=False) as store:
        good = store.add_sample(make_sample(1, status="accepted"), user="t")
        bad = store.add_sample(make_sample(2, status="accepted"), user="t")
        broken = np.asarray(store.get_sample(bad).sample.edited_image).copy()
        outside = np.argwhere(store.get_sample(bad).sample.edit_mask == 0)[:3]
        for y, x in outside:
            broken[y, x, 1] ^= 1  # three background pixels off by 1 of 255, as an old import could hold
        store._conn.execute("UPDATE samples SET edited_image = ? WHERE sample_id = ?",
                            (store.blobs.put(Image.fromarray(broken)), bad))
    with pytest.raises(ExportRefusedError) as err:
        export_store(path, tmp_path / "ds")
    assert [sid for sid, _ in err.value.problems] == [bad] and good not in str(err.value)
    assert "at 3 pixels outside edit_mask" in str(err.value) and "repair --background" in str(err.value)
    assert not (tmp_path / "ds").exists()
    # the writer refuses such a sample from any source, not only from a store
    with Store.open(path, create=False) as store:
        sample = store.get_sample(bad).sample
        assert len(store.repair_background()) == 1
    with DatasetWriter(tmp_path / "ds2") as w:
        assert any("3 pixels outside edit_mask" in p for p in w.add(sample))
    # repaired, the store exports
    assert export_store(path, tmp_path / "ds").rows == 2


def test_refused_export_keeps_the_previous_dataset(tmp_path: Path, store_path: Path) -> None:
    out = tmp_path / "ds"
    export_store(store_path, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _drafts(store_path)  # add bad drafts to the same store
    assert main(["export", "--store", str(store_path), "--out", str(out), "--status", "draft", "--overwrite"]) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # without --overwrite a non-empty folder is refused up front
    with pytest.raises(InputError, match="overwrite"):
        export_store(store_path, out)
    # with it, the folder is replaced whole
    summary = export_store(store_path, out, statuses=["accepted", "candidate"], overwrite=True)
    assert summary.rows == N_EDITS + 1


def test_overwrite_replaces_only_an_earlier_export(tmp_path: Path, store_path: Path) -> None:
    # --overwrite replaces the whole folder; a folder that is not an export must never be deleted
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("keep me")
    (project / "data").mkdir()
    with pytest.raises(InputError, match="does not hold an earlier export"):
        export_store(store_path, project, overwrite=True)
    assert main(["export", "--store", str(store_path), "--out", str(project), "--overwrite"]) == 2
    assert (project / "notes.txt").read_text() == "keep me"
    # an export with a stray file added is not an earlier export either
    out = tmp_path / "ds"
    export_store(store_path, out, save_to_disk=False)
    (out / "mine.txt").write_text("x")
    with pytest.raises(InputError, match="does not hold an earlier export"):
        export_store(store_path, out, overwrite=True)
    (out / "mine.txt").unlink()
    assert export_store(store_path, out, overwrite=True).rows == N_EDITS
    assert (out / "hf").is_dir()


def test_no_op_edit_may_have_an_empty_edit_mask(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Store.open(path, durable=False) as store:
        same = make_sample(5, status="draft", edit_type="other")
        same.edited_image = same.source_image.copy()
        same.edit_mask = np.zeros_like(same.edit_mask)
        noop = store.add_sample(same, user="t")
        changed = make_sample(6, status="draft")
        changed.edit_mask = np.zeros_like(changed.edit_mask)
        bad = store.add_sample(changed, user="t")
    with pytest.raises(ExportRefusedError) as err:
        export_store(path, tmp_path / "ds", statuses=["draft"])
    assert [sid for sid, _ in err.value.problems] == [bad]
    assert "edit_mask is empty" in err.value.problems[0][1][0]
    with Store.open(path, create=False) as store:
        rec = store.get_sample(bad, images=False)
        store.update_sample(bad, {"status": "rejected"}, rec.version, "t")
    summary = export_store(path, tmp_path / "ds", statuses=["draft"])
    assert summary.rows == 1 and summary.stats.by_edit_type == {"other": {"train": 1}}
    assert noop


def test_crash_while_finishing_leaves_no_half_dataset(tmp_path: Path, store_path: Path, monkeypatch) -> None:
    def boom(self, meta):
        raise RuntimeError("disk full")

    monkeypatch.setattr(DatasetWriter, "_save_to_disk_copy", boom)
    with pytest.raises(RuntimeError):
        export_store(store_path, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob("ds.export-*"))


def test_empty_selection_and_unknown_status_are_errors(tmp_path: Path, store_path: Path) -> None:
    with pytest.raises(InputError, match="nothing to export"):
        export_store(store_path, tmp_path / "ds", statuses=["rejected"])
    with pytest.raises(InputError, match="status"):
        export_store(store_path, tmp_path / "ds", statuses=["done"])
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------------------- CLI and the Hub
def test_cli_export_and_push_to_hub_is_wired(tmp_path: Path, store_path: Path, monkeypatch, capsys) -> None:
    import huggingface_hub

    calls: list[tuple[str, tuple, dict]] = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", (), {"token": token}))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", (repo_id,), kw))
            return f"https://huggingface.co/datasets/{repo_id}"

        def upload_folder(self, **kw):
            calls.append(("upload_folder", (), kw))
            folder = Path(kw["folder_path"])
            assert (folder / "README.md").is_file() and list((folder / "data").glob("*.parquet"))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "ds"
    rc = main(["export", "--store", str(store_path), "--out", str(out), "--json", "--push-to-hub", "me/refcoco-edit",
               "--private", "--shard-size", "5"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["rows"] == N_EDITS and printed["hub_url"].endswith("me/refcoco-edit")
    kinds = [c[0] for c in calls]
    assert kinds == ["init", "create_repo", "upload_folder"]
    assert calls[1][2]["repo_type"] == "dataset" and calls[1][2]["private"] is True
    up = calls[2][2]
    assert up["repo_id"] == "me/refcoco-edit" and up["repo_type"] == "dataset"
    assert Path(up["folder_path"]) == out and "README.md" in up["allow_patterns"]
    assert "data/*.parquet" in up["allow_patterns"]


def test_cli_private_needs_push(tmp_path: Path, store_path: Path) -> None:
    assert main(["export", "--store", str(store_path), "--out", str(tmp_path / "ds"), "--private"]) == 2


def test_writer_refuses_bad_split_names(tmp_path: Path) -> None:
    s = make_sample(1, status="accepted", split="test-A")
    s.sample_id = "x1"
    with DatasetWriter(tmp_path / "ds") as w:
        assert any("split" in p for p in w.add(s))
        with pytest.raises(ExportRefusedError, match="x1"):
            w.finish()
    assert not (tmp_path / "ds").exists()


# A child process that exports and SIGKILLs itself at a chosen point: "rows" (the temporary folder is
# half written) or "between-renames" (the old export moved aside, the new one not yet in place).
_KILLED_EXPORT = """
import os, signal, sys
from refcoco_edit.dataset import export
store, out, point = sys.argv[1:4]
if point == "rows":
    real_add = export.DatasetWriter.add
    def add(self, *a, **k):
        real_add(self, *a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    export.DatasetWriter.add = add
else:
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if ".export-old-" in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)
    export.os.replace = replace
export.export_store(store, out, overwrite=True, save_to_disk=False)
"""


def _killed_export(store_path: Path, out: Path, point: str) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, str(store_path), str(out), point], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr


def test_a_rerun_cleans_up_after_killed_exports(tmp_path: Path, store_path: Path) -> None:
    import signal  # noqa: F401 - the child uses SIGKILL; POSIX only

    out = tmp_path / "ds"
    export_store(store_path, out, save_to_disk=False)
    first = sorted(p.name for p in (out / "data").iterdir())
    _killed_export(store_path, out, "rows")
    assert [p.name for p in tmp_path.glob("ds.export-tmp-*")] and out.is_dir()
    _killed_export(store_path, out, "between-renames")
    assert not out.exists() and [p.name for p in tmp_path.glob("ds.export-old-*")]  # the hole being fixed
    from refcoco_edit.dataset.export import recover

    done = recover(out)
    assert out.is_dir() and sorted(p.name for p in (out / "data").iterdir()) == first  # the old export is back
    assert not list(tmp_path.glob("ds.export-*")) and any(line.startswith("restored") for line in done)
    _killed_export(store_path, out, "rows")
    export_store(store_path, out, overwrite=True, save_to_disk=False)  # a plain rerun recovers by itself
    assert not list(tmp_path.glob("ds.export-*")) and (out / "README.md").is_file()


def test_recover_leaves_a_running_export_alone(tmp_path: Path) -> None:
    import os

    from refcoco_edit.dataset.export import recover

    mine = tmp_path / f"ds.export-tmp-{os.getpid()}-0123abcd"
    mine.mkdir()
    (tmp_path / "ds.export-tmp-notapid").mkdir()  # not a name an export makes
    assert recover(tmp_path / "ds") == [] and mine.is_dir()
