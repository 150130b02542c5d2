"""The background invariant (I_e == I_s outside M_e): the one function that keeps it, the store that
applies it on every write (samples from the build, from the app's brush corrections), `store check`
that finds rows breaking it and `store repair --background` that mends them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refcoco_edit.cli import main
from refcoco_edit.errors import InputError
from refcoco_edit.imaging.masks import background_changes, keep_background
from refcoco_edit.schema import Sample
from refcoco_edit.store import Candidate, Store, pixel_hash
from tests.refcoco_edit.store_worker import make_sample


@pytest.fixture()
def store(tmp_path: Path):
    with Store.open(tmp_path / "s.sqlite", durable=False) as s:
        yield s


def _rand(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _box(h: int, w: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[top:bottom, left:right] = 1
    return m


def _outside_differs(sample: Sample) -> int:
    """Pixels outside M_e where the stored edited image differs from the source, counted by hand."""
    src = np.asarray(sample.source_image.convert("RGB")).astype(int)
    out = np.asarray(sample.edited_image.convert("RGB")).astype(int)
    return int(sum(1 for y, x in zip(*np.nonzero(sample.edit_mask == 0)) if (src[y, x] != out[y, x]).any()))


# ---------------------------------------------------------------------------- the function
def test_keep_background_is_the_source_outside_and_the_edit_inside() -> None:
    src, out = _rand(1, 12, 9), _rand(2, 12, 9)
    mask = _box(12, 9, 2, 3, 7, 8)
    got = np.asarray(keep_background(Image.fromarray(src), Image.fromarray(out), mask))
    for y in range(12):  # a pixel loop as the independent reference
        for x in range(9):
            np.testing.assert_array_equal(got[y, x], out[y, x] if mask[y, x] else src[y, x])
    assert background_changes(src, out, mask) == int(((src != out).any(axis=2) & (mask == 0)).sum()) > 0
    assert background_changes(src, got, mask) == 0
    # arrays in, array out; already kept: the same object back (no copy, no new blob)
    arr = keep_background(src, out, mask)
    assert isinstance(arr, np.ndarray) and np.array_equal(arr, got)
    kept = Image.fromarray(got)
    assert keep_background(Image.fromarray(src), kept, mask) is kept
    # one differing channel of one pixel counts
    one = src.copy()
    one[0, 0, 2] ^= 1
    assert background_changes(src, one, mask) == 1
    with pytest.raises(InputError, match="edited image is 8x12"):
        background_changes(src, src[:, :8], mask)
    with pytest.raises(InputError, match="edit mask has shape"):
        background_changes(src, out, mask[:, :8])


# ---------------------------------------------------------------------------- the store keeps it
def test_add_sample_stores_the_source_outside_m_e(store: Store) -> None:
    s = make_sample(1)
    s.edited_image = Image.fromarray(_rand(99))  # differs everywhere
    sid = store.add_sample(s, user="build")
    got = store.get_sample(sid).sample
    assert _outside_differs(got) == 0
    inside = got.edit_mask == 1
    np.testing.assert_array_equal(np.asarray(got.edited_image)[inside], _rand(99)[inside])
    # a draft without an edited image is stored as it is
    d = make_sample(2, status="draft")
    d.edited_image, d.edit_mask = None, None
    rec = store.get_sample(store.add_sample(d, user="ann"))
    assert rec.sample.edited_image is None


def test_app_flow_choose_then_trim_and_grow_m_e(store: Store) -> None:
    """The app's calls: a draft, candidates, one chosen, M_e corrected with the brush and saved."""
    src = _rand(3, 20, 20)
    s = make_sample(3, status="draft", size=20)
    s.source_image, s.edited_image, s.edit_mask = Image.fromarray(src), None, None
    sid = store.add_sample(s, user="ann")
    cand = _rand(4, 20, 20)  # a pipeline's raw result: it differs from the source everywhere
    cand_mask = _box(20, 20, 4, 4, 12, 12)
    [cid] = store.add_candidates(sid, [Candidate(image=Image.fromarray(cand), edit_mask=cand_mask, seed=1)], "ann")
    v = store.choose_candidate(sid, cid, "ann", expected_version=1)
    got = store.get_sample(sid).sample
    np.testing.assert_array_equal(np.asarray(got.edited_image),
                                  np.where(cand_mask[:, :, None] == 1, cand, src))
    # the candidate itself stays as the pipeline made it
    np.testing.assert_array_equal(np.asarray(store.get_candidates(sid)[0].image), cand)

    # trimmed: the cut pixels get the source back
    trimmed = _box(20, 20, 4, 4, 12, 8)
    v = store.update_sample(sid, {"edit_mask": trimmed}, v, "ann")
    got = store.get_sample(sid).sample
    np.testing.assert_array_equal(np.asarray(got.edited_image), np.where(trimmed[:, :, None] == 1, cand, src))

    # grown beyond the candidate's own M_e: the candidate's pixels the annotator painted over come in
    grown = _box(20, 20, 2, 2, 16, 16)
    v = store.update_sample(sid, {"edit_mask": grown, "status": "draft"}, v, "ann")
    got = store.get_sample(sid).sample
    np.testing.assert_array_equal(np.asarray(got.edited_image), np.where(grown[:, :, None] == 1, cand, src))
    assert store.audit(sid)[-1].diff["edited_image"][1] == pixel_hash(got.edited_image)

    # saving the same mask again changes nothing (no new version)
    assert store.update_sample(sid, {"edit_mask": grown}, v, "ann") == v


def test_a_changed_mask_cuts_the_stored_image_when_it_is_not_the_candidate(store: Store) -> None:
    s = make_sample(5, size=20)
    sid = store.add_sample(s, user="ann")
    painted = np.asarray(store.get_sample(sid).sample.edited_image).copy()
    painted[s.edit_mask == 1] = 7  # someone put another edited image in, not from a candidate
    v = store.update_sample(sid, {"edited_image": Image.fromarray(painted)}, 1, "ann")
    [cid] = store.add_candidates(sid, [Candidate(image=Image.fromarray(_rand(6, 20, 20)), seed=1)], "ann")
    store._conn.execute("UPDATE candidates SET chosen = 1 WHERE candidate_id = ?", (cid,))  # stale flag
    smaller = np.zeros_like(s.edit_mask)
    smaller[2:5, 3:6] = 1
    store.update_sample(sid, {"edit_mask": smaller}, v, "ann")
    got = np.asarray(store.get_sample(sid).sample.edited_image)
    np.testing.assert_array_equal(got, np.where(smaller[:, :, None] == 1, painted, np.asarray(s.source_image)))


# ---------------------------------------------------------------------------- check and repair
def _break(store: Store, sid: str, seed: int) -> np.ndarray:
    """Put an edited image that breaks the invariant into a row, as an old import could have."""
    bad = _rand(seed)
    store._conn.execute("UPDATE samples SET edited_image = ? WHERE sample_id = ?",
                        (store.blobs.put(Image.fromarray(bad)), sid))
    return bad


def test_check_finds_and_repair_mends_rows_that_break_the_invariant(store: Store) -> None:
    ids = [store.add_sample(make_sample(i), user="build") for i in range(3)]
    assert store.check()["ok"] and store.check()["background_rows"] == []
    bad = _break(store, ids[1], 42)
    report = store.check()
    assert not report["ok"] and len(report["background_rows"]) == 1 and ids[1] in report["background_rows"][0]
    [row] = store.background_rows()
    src = np.asarray(make_sample(1).source_image)
    mask = make_sample(1).edit_mask
    assert row.sample_id == ids[1] and row.pixels == int(((bad != src).any(axis=2) & (mask == 0)).sum())
    assert [r.sample_id for r in store.repair_background(dry_run=True)] == [ids[1]]
    assert store.get_sample(ids[1]).version == 1  # a dry run changes nothing
    [fixed] = store.repair_background("admin")
    assert fixed.sample_id == ids[1]
    rec = store.get_sample(ids[1])
    assert rec.version == 2 and _outside_differs(rec.sample) == 0
    np.testing.assert_array_equal(np.asarray(rec.sample.edited_image)[mask == 1], bad[mask == 1])
    entry = store.audit(ids[1])[-1]
    assert (entry.action, entry.user, sorted(entry.diff)) == ("repair_background", "admin", ["edited_image"])
    assert store.check()["ok"] and store.repair_background() == []


def test_store_check_and_repair_commands(tmp_path: Path, capsys) -> None:
    db = tmp_path / "s.sqlite"
    with Store.open(db, durable=False) as st:
        sid = st.add_sample(make_sample(1), user="build")
        _break(st, sid, 43)
    assert main(["store", "--store", str(db), "check"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and f"sample {sid} (candidate):" in out and "repair --background" in out
    assert main(["store", "--store", str(db), "repair", "--background", "--dry-run", "--json"]) == 0
    assert [r["sample_id"] for r in json.loads(capsys.readouterr().out)["samples"]] == [sid]
    assert main(["store", "--store", str(db), "repair", "--background"]) == 0
    assert "repaired 1 sample(s)" in capsys.readouterr().out
    assert main(["store", "--store", str(db), "check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["background_rows"] == []


def test_an_imported_dump_keeps_its_rows_and_check_finds_the_broken_one(store: Store, tmp_path: Path) -> None:
    """A backup restores faithfully (an older dump may hold rows made before the invariant); `check`
    names them and `repair --background` mends them in the restored store."""
    ids = [store.add_sample(make_sample(i), user="build") for i in range(2)]
    bad = _break(store, ids[0], 44)
    store.dump(tmp_path / "old.jsonl")
    with Store.open(tmp_path / "restored.sqlite", durable=False) as restored:
        restored.import_(tmp_path / "old.jsonl")
        np.testing.assert_array_equal(np.asarray(restored.get_sample(ids[0]).sample.edited_image), bad)
        assert [r.sample_id for r in restored.background_rows()] == [ids[0]]
        assert [r.sample_id for r in restored.repair_background()] == [ids[0]]
        assert restored.check()["ok"]
