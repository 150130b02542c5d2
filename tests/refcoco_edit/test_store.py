"""The annotation store: round trips, versions and conflicts, keys and failures, candidates, reviews,
users, assignments, migrations, dumps, several writer processes, and processes killed mid-write."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refcoco_edit.cli import main
from refcoco_edit.errors import DataError, InputError, RefcocoEditError
from refcoco_edit.store import (
    Candidate,
    ConflictError,
    DumpError,
    DuplicateKeyError,
    NotFoundError,
    SchemaVersionError,
    Store,
    StoreError,
    pixel_hash,
    rle,
)
from refcoco_edit.store import db as db_mod
from refcoco_edit.store.migrations import LATEST, MIGRATIONS, migrate, read_version
from tests.refcoco_edit.store_worker import increment, make_sample, race_insert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def store(tmp_path: Path):
    with Store.open(tmp_path / "s.sqlite", durable=False) as s:
        yield s


def assert_same_image(a, b) -> None:
    assert a.mode == b.mode and a.size == b.size
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def assert_same_sample(got, want, *, skip=("sample_id", "created_at", "updated_at")) -> None:
    for name in got.field_names():
        if name in skip:
            continue
        g, w = getattr(got, name), getattr(want, name)
        if name in ("source_image", "edited_image"):
            assert_same_image(g, w)
        elif name in ("source_mask", "edit_mask"):
            assert g.dtype == np.uint8
            np.testing.assert_array_equal(g, w)
        else:
            assert g == w, name


# ---------------------------------------------------------------------------- masks and images
def test_rle_matches_a_hand_written_column_major_run_length() -> None:
    rng = np.random.default_rng(3)
    mask = (rng.random((13, 7)) > 0.6).astype(np.uint8)
    enc = rle.encode(mask)
    assert enc["size"] == [13, 7] and isinstance(enc["counts"], str)
    json.dumps(enc)  # JSON-safe
    # independent reference: runs of 0s then 1s, alternately, over the column-major pixel order
    runs, cur, n = [], 0, 0
    for v in mask.flatten(order="F"):
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    from pycocotools import mask as mask_utils

    uncompressed = mask_utils.frPyObjects({"size": [13, 7], "counts": runs}, 13, 7)
    assert uncompressed["counts"].decode() == enc["counts"]
    back = rle.decode(enc)
    assert back.dtype == np.uint8 and back.flags.c_contiguous
    np.testing.assert_array_equal(back, mask)
    np.testing.assert_array_equal(rle.decode(rle.encode(mask.astype(bool))), mask)
    with pytest.raises(InputError, match="only 0 and 1"):
        rle.encode(mask * 255)
    with pytest.raises(InputError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2), np.uint8))


def test_rle_whose_runs_do_not_cover_the_mask_is_refused() -> None:
    # a dump or a damaged row may hold such counts; pycocotools would return uninitialised memory
    from refcoco_edit.errors import DataError

    full = rle.encode(np.ones((8, 8), np.uint8))["counts"]
    for counts in ("3", "0", full):
        with pytest.raises(DataError, match="not a COCO RLE mask"):
            rle.decode({"size": [4, 4], "counts": counts})
    with pytest.raises(DataError, match="not a COCO RLE mask"):
        rle.decode({"counts": "3"})


def test_blobs_are_named_by_their_pixels_and_read_back_exactly(store: Store) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (16, 12, 4), dtype=np.uint8), "RGBA"),
              Image.fromarray(rng.integers(0, 256, (16, 12), dtype=np.uint8), "L")]
    for im in images:
        digest = store.blobs.put(im)
        w, h = im.size
        assert digest == hashlib.sha256(f"{im.mode} {w}x{h}\n".encode() + im.tobytes()).hexdigest()
        path = store.blobs.path(digest)
        assert path == Path(f"{store.path}.blobs") / digest[:2] / f"{digest}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert_same_image(store.blobs.get(digest), im)
        assert store.blobs.put(im.copy()) == digest  # written once
    # the same pixels from another encoder keep the name; a file whose pixels differ is refused
    buf = io.BytesIO()
    images[0].save(buf, format="PNG", compress_level=9)
    other = Store.open(store.path.with_name("t.sqlite"), durable=False)
    other.blobs.put_png(pixel_hash(images[0]), buf.getvalue())
    assert other.blobs.verify(pixel_hash(images[0]))
    with pytest.raises(DataError, match="hash to"):
        other.blobs.put_png(pixel_hash(images[1]), buf.getvalue())
    other.close()
    assert list(store.blobs.tmp.iterdir()) == []


# ---------------------------------------------------------------------------- samples
def test_add_and_get_round_trip_every_field(store: Store) -> None:
    sample = make_sample(1, annotator="ann1")
    sid = store.add_sample(sample, user="ann1")
    rec = store.get_sample(sid)
    assert rec.version == 1 and rec.key is None and rec.error is None
    assert rec.sample.sample_id == sid and len(sid) == 24
    assert_same_sample(rec.sample, sample)
    assert rec.sample.created_at.endswith("Z") and rec.sample.updated_at == rec.sample.created_at
    assert sample.sample_id == ""  # the caller's object is not changed
    light = store.get_sample(sid, images=False)
    assert light.sample.source_image is None and light.blobs["source_image"] == pixel_hash(sample.source_image)
    (entry,) = store.audit(sid)
    assert (entry.user, entry.action) == ("ann1", "add")
    assert entry.diff["prompt"] == [None, sample.prompt]
    assert entry.diff["source_mask"][1] == rle.encode(sample.source_mask)
    with pytest.raises(NotFoundError):
        store.get_sample("nope")


def test_candidate_and_accepted_samples_must_validate_drafts_need_not(store: Store) -> None:
    bad = make_sample(1)
    bad.edit_spans = [[0, 8]]  # "replace " is not the edit text
    with pytest.raises(InputError, match="edit spans give"):
        store.add_sample(bad, user="u")
    bad.status = "draft"
    bad.source_image = bad.edited_image = bad.source_mask = bad.edit_mask = None
    sid = store.add_sample(bad, user="u")
    rec = store.get_sample(sid)
    assert rec.sample.source_image is None and rec.sample.edit_mask is None and rec.sample.edit_spans == [[0, 8]]
    # promoting it is checked against the merged sample, and refused
    with pytest.raises(InputError, match="source_image is missing"):
        store.set_status(sid, "candidate", "u", expected_version=1)
    assert store.get_sample(sid).version == 1 and store.get_sample(sid).sample.status == "draft"
    with pytest.raises(InputError, match="edit_type"):
        store.add_sample(make_sample(2, status="draft", edit_type="paint"), user="u")
    with pytest.raises(InputError, match="cannot change"):
        store.update_sample(sid, {"sample_id": "x"}, 1, "u")


def test_optimistic_versions_refuse_a_stale_write(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    a, b = Store.open(path, durable=False), Store.open(path, durable=False)
    sid = a.add_sample(make_sample(1), user="a")
    ra, rb = a.get_sample(sid), b.get_sample(sid)
    assert a.update_sample(sid, {"target": "wolf", "prompt": ra.sample.prompt}, ra.version, "alice") == 2
    with pytest.raises(ConflictError) as info:
        b.update_sample(sid, {"target": "horse"}, rb.version, "bob")
    err = info.value
    assert isinstance(err, RefcocoEditError)
    assert (err.sample_id, err.expected_version, err.actual_version) == (sid, 1, 2)
    assert sid in str(err) and "version 1" in str(err) and "version 2" in str(err)
    rec = b.get_sample(sid)
    assert rec.sample.target == "wolf" and rec.version == 2
    # a change that changes nothing writes nothing
    assert b.update_sample(sid, {"target": "wolf"}, 2, "bob") == 2
    log = b.audit(sid)
    assert [e.action for e in log] == ["add", "update"]
    assert log[1].user == "alice" and log[1].diff == {"target": ["dog", "wolf"]}
    # images and masks change too, and the diff names their hashes / RLE
    new_mask = np.zeros((16, 16), np.uint8)
    new_mask[0:4, 0:4] = 1
    new_img = make_sample(9).edited_image
    assert b.update_sample(sid, {"edit_mask": new_mask, "edited_image": new_img}, 2, "bob") == 3
    got = a.get_sample(sid).sample
    np.testing.assert_array_equal(got.edit_mask, new_mask)
    # outside the new M_e the store keeps the source (the background invariant, store/background.py)
    want = np.where(new_mask[:, :, None] == 1, np.asarray(new_img), np.asarray(got.source_image))
    np.testing.assert_array_equal(np.asarray(got.edited_image), want)
    assert a.audit(sid)[-1].diff["edited_image"][1] == pixel_hash(Image.fromarray(want))
    assert a.audit(sid)[-1].diff["edit_mask"][1] == rle.encode(new_mask)
    a.close()
    b.close()


def test_list_count_and_stats_stream_with_filters(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(db_mod, "PAGE", 3)  # several pages even for a few rows
    want = []
    for i in range(11):
        s = make_sample(i, split="val" if i % 3 == 0 else "train", edit_type="remove" if i % 2 else "replace",
                        annotator=f"a{i % 2}", status="accepted" if i < 4 else "candidate",
                        pipeline="manual" if i == 5 else "composition")
        want.append(store.add_sample(s, user="u"))
    store.record_failure("ref:99", "image missing", "build", ref_id=99, split="train")
    assert [r.sample.sample_id for r in store.list_samples(images=False)] == want
    assert [r.sample.sample_id for r in store.list_samples(limit=5, offset=4, images=False)] == want[4:9]
    assert [r.sample.sample_id for r in store.list_samples(split="train", edit_type="remove", images=False)] == \
        [want[i] for i in range(11) if i % 3 and i % 2]
    first = next(store.list_samples(status="accepted"))
    assert_same_image(first.sample.source_image, make_sample(0).source_image)
    assert store.count() == 11 and store.count(status="accepted") == 4 and store.count(failed=True) == 1
    assert store.count(failed=None) == 12
    assert [r.key for r in store.list_samples(failed=True)] == ["ref:99"]
    stats = store.stats()
    assert stats["samples"] == 11 and stats["failed"] == 1 and stats["schema_version"] == LATEST
    assert stats["by_status"] == {"accepted": 4, "candidate": 7}
    assert stats["by_edit_type"] == {"remove": 5, "replace": 6}
    assert stats["by_pipeline"] == {"composition": 10, "manual": 1}
    assert stats["by_split"] == {"train": 7, "val": 4}
    assert stats["by_annotator"] == {"a0": 6, "a1": 5}


def test_keys_make_builds_idempotent_and_failures_are_recorded(store: Store) -> None:
    key = "ref:12|edit:replace|pipeline:composition"
    assert not store.has_key(key)
    fid = store.record_failure(key, "pipeline error: boom", "build", ref_id=12, edit_type="replace")
    assert store.has_key(key) and not store.has_key(key, include_failed=False)
    assert store.record_failure(key, "boom again", "build") == fid  # retried and failed again
    (f,) = store.failures()
    assert (f.key, f.sample_id, f.error) == (key, fid, "boom again")
    assert store.get_sample(fid).version == 2
    sid = store.add_sample(make_sample(1), user="build", key=key)  # a retry that works replaces it
    assert sid == fid and store.get_sample(sid).version == 3 and store.get_sample(sid).error is None
    assert store.failures() == [] and store.has_key(key, include_failed=False)
    with pytest.raises(DuplicateKeyError) as info:
        store.add_sample(make_sample(2), user="build", key=key)
    assert info.value.sample_id == sid
    with pytest.raises(DuplicateKeyError):
        store.record_failure(key, "late failure", "build")
    explicit = make_sample(3)
    explicit.sample_id = "mine"
    store.add_sample(explicit, user="u")
    with pytest.raises(DuplicateKeyError, match="sample id"):
        store.add_sample(explicit, user="u")
    assert store.count() == 2
    assert [e.action for e in store.audit(sid)] == ["build_failed", "build_failed", "add"]


# ---------------------------------------------------------------------------- candidates, reviews, users
def test_candidates_are_stored_and_one_is_chosen(store: Store) -> None:
    sid = store.add_sample(make_sample(1), user="build")
    cands = []
    for seed in (7, 8):
        m = np.zeros((16, 16), np.uint8)
        m[seed:, :seed] = 1
        cands.append(Candidate(image=make_sample(100 + seed).edited_image, edit_mask=m, seed=seed,
                               params={"steps": 20, "guidance": 7.5}, model="tiny-pbe", score=0.1 * seed))
    ids = store.add_candidates(sid, cands, user="build")
    assert store.get_sample(sid).version == 1
    got = store.get_candidates(sid)
    assert [c.candidate_id for c in got] == ids and not any(c.chosen for c in got)
    for g, c in zip(got, cands):
        assert_same_image(g.image, c.image)
        np.testing.assert_array_equal(g.edit_mask, c.edit_mask)
        assert (g.seed, g.params, g.model, g.score) == (c.seed, c.params, c.model, pytest.approx(c.score))
    v = store.choose_candidate(sid, ids[1], "ann", expected_version=1)
    rec = store.get_sample(sid)
    assert v == rec.version == 2
    # the candidate inside its M_e, the source outside (the background invariant)
    inside = cands[1].edit_mask[:, :, None] == 1
    np.testing.assert_array_equal(np.asarray(rec.sample.edited_image),
                                  np.where(inside, np.asarray(cands[1].image), np.asarray(rec.sample.source_image)))
    np.testing.assert_array_equal(rec.sample.edit_mask, cands[1].edit_mask)
    assert rec.sample.generation == {"steps": 20, "guidance": 7.5, "model": "tiny-pbe", "seed": 8}
    assert [c.chosen for c in store.get_candidates(sid, images=False)] == [False, True]
    v = store.choose_candidate(sid, ids[0], "ann", expected_version=v)
    assert [c.chosen for c in store.get_candidates(sid, images=False)] == [True, False]
    assert store.audit(sid)[-1].diff["chosen_candidate"] == [[ids[1]], ids[0]]
    with pytest.raises(ConflictError):
        store.choose_candidate(sid, ids[1], "ann", expected_version=1)
    other = store.add_sample(make_sample(2), user="build")
    with pytest.raises(NotFoundError):
        store.choose_candidate(other, ids[0], "ann", expected_version=1)


def test_reviews_set_status_and_reviewer_atomically(store: Store) -> None:
    sid = store.add_sample(make_sample(1), user="ann")
    v = store.add_review(sid, "rev", "send_back", expected_version=1, comment="mask too loose")
    rec = store.get_sample(sid)
    assert (v, rec.sample.status, rec.sample.reviewer) == (2, "draft", "rev")
    v = store.add_review(sid, "rev", "accept", expected_version=v)
    assert store.get_sample(sid).sample.status == "accepted"
    with pytest.raises(ConflictError):
        store.add_review(sid, "rev2", "reject", expected_version=1)
    v = store.add_review(sid, "rev2", "reject", expected_version=v, comment="wrong object")
    reviews = store.get_reviews(sid)
    assert [(r.reviewer, r.decision, r.comment) for r in reviews] == [
        ("rev", "send_back", "mask too loose"), ("rev", "accept", ""), ("rev2", "reject", "wrong object")]
    assert store.get_sample(sid).sample.status == "rejected" and v == 4
    with pytest.raises(InputError, match="decision"):
        store.add_review(sid, "rev", "maybe", expected_version=v)
    # accepting an invalid sample is refused and leaves no review behind
    draft = make_sample(2, status="draft")
    draft.edit_mask = np.zeros((16, 16), np.uint8)
    did = store.add_sample(draft, user="ann")
    with pytest.raises(InputError, match="edit_mask is empty"):
        store.add_review(did, "rev", "accept", expected_version=1)
    assert store.get_reviews(did) == [] and store.get_sample(did).sample.status == "draft"


def test_users_have_salted_password_hashes(store: Store) -> None:
    store.add_user("alice", "annotator", "s3cret")
    store.add_user("bot", "admin")
    assert store.verify_user("alice", "s3cret").role == "annotator"
    assert store.verify_user("alice", "wrong") is None
    assert store.verify_user("nobody", "s3cret") is None
    assert store.verify_user("bot", "") is None  # no password: cannot log in
    raw = store._conn.execute("SELECT password_hash FROM users WHERE name = 'alice'").fetchone()[0]
    assert "s3cret" not in raw and raw.startswith("scrypt$")
    store.add_user("bob", "reviewer", "s3cret")
    raw_bob = store._conn.execute("SELECT password_hash FROM users WHERE name = 'bob'").fetchone()[0]
    assert raw_bob != raw  # salted
    with pytest.raises(StoreError, match="already exists"):
        store.add_user("alice", "admin", "x")
    with pytest.raises(InputError, match="role"):
        store.add_user("carol", "boss", "x")
    store.set_password("alice", "new")
    assert store.verify_user("alice", "new") and not store.verify_user("alice", "s3cret")
    assert [u.name for u in store.list_users()] == ["alice", "bob", "bot"]
    assert store.get_user("bot").has_password is False
    assert all("s3cret" not in json.dumps(e.diff) for e in store.audit())


def test_assignments_expire_and_belong_to_one_user(store: Store) -> None:
    t = 1_000_000.0
    assert store.assign("ref:1", "alice", ttl_s=60, now=t)
    assert not store.assign("ref:1", "bob", ttl_s=60, now=t + 30)
    assert store.assign("ref:1", "alice", ttl_s=60, now=t + 30)  # extends
    assert [a.expires_at for a in store.assignments("alice", now=t + 31)] == [t + 90]
    assert store.assign("ref:1", "bob", ttl_s=60, now=t + 91)  # alice's claim expired
    assert [(a.ref_key, a.user) for a in store.assignments(now=t + 92)] == [("ref:1", "bob")]
    assert not store.release("ref:1", "alice") and store.release("ref:1", "bob")
    assert store.assignments(now=t + 92) == []


# ---------------------------------------------------------------------------- schema versions
def test_an_older_store_is_migrated_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    assert len(MIGRATIONS) >= 2
    with Store.open(path, upto_version=1, durable=False) as old:
        assert old.schema_version == 1
        cols = [r[1] for r in old._conn.execute("PRAGMA table_info(samples)")]
        assert "error" not in cols
        old._conn.execute("INSERT INTO samples (sample_id, prompt, status, referring_spans) "
                          "VALUES ('s1', 'a dog', 'draft', '[[2, 5]]')")
    with Store.open(path, durable=False) as new:
        assert new.schema_version == LATEST
        rec = new.get_sample("s1")
        assert rec.error is None and rec.sample.prompt == "a dog" and rec.sample.referring_spans == [[2, 5]]
        assert new.assign("ref:1", "alice")
        indexes = {r[0] for r in new._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"samples_filter", "audit_sample"} <= indexes
        new._conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(LATEST + 1),))
    with pytest.raises(SchemaVersionError, match=f"schema version {LATEST + 1}.*upgrade"):
        Store.open(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, not at all" * 100)
    with pytest.raises(StoreError, match="not a readable store"):
        Store.open(junk)
    with pytest.raises(StoreError, match="no store at"):
        Store.open(tmp_path / "absent.sqlite", create=False)
    assert not (tmp_path / "absent.sqlite").exists()


def test_a_failing_migration_leaves_the_old_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.sqlite", isolation_level=None)
    assert migrate(conn) == (0, LATEST)

    def broken(c) -> None:
        c.execute("CREATE TABLE half_done (x)")
        c.execute("ALTER TABLE samples ADD COLUMN extra TEXT")
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError):
        migrate(conn, migrations=(*MIGRATIONS, broken))
    assert read_version(conn) == LATEST
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None
    assert "extra" not in [r[1] for r in conn.execute("PRAGMA table_info(samples)")]
    assert migrate(conn, migrations=(*MIGRATIONS, lambda c: c.execute("CREATE TABLE ok3 (x)"))) == (LATEST, LATEST + 1)
    conn.close()


# ---------------------------------------------------------------------------- dump and import
def _fill(store: Store) -> list[str]:
    ids = [store.add_sample(make_sample(i, annotator="ann"), user="ann", key=f"ref:{i}") for i in range(3)]
    cid = store.add_candidates(ids[0], [Candidate(image=make_sample(50).edited_image, seed=1, model="m"),
                                        Candidate(image=make_sample(51).edited_image, seed=2)], "build")
    store.choose_candidate(ids[0], cid[1], "ann", 1)
    store.add_review(ids[1], "rev", "accept", 1, comment="good")
    store.record_failure("ref:9", "corrupt image", "build", ref_id=9)
    store.add_user("alice", "annotator", "pw")
    store.assign("ref:5", "alice", ttl_s=3600)
    return ids


def _records(path: Path) -> list[dict]:
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", ["backup.jsonl", "backup.jsonl.gz"])
def test_dump_and_import_restore_everything(store: Store, tmp_path: Path, name: str) -> None:
    ids = _fill(store)
    first = tmp_path / name
    counts = store.dump(first)
    # 9 images: 3 samples x 2, 2 candidates, the chosen candidate with the source outside M_e; the
    # edited image it replaced is kept
    assert counts == {"blob": 9, "user": 1, "sample": 4, "candidate": 2, "review": 1, "assignment": 1,
                      "audit": len(store.audit())}
    with Store.open(tmp_path / "restored.sqlite", durable=False) as restored:
        result = restored.import_(first)
        assert result["added"]["sample"] == 4 and result["skipped"] == {} and result["missing_blobs"] == 0
        assert sorted(restored.blobs.all_hashes()) == sorted(store.blobs.all_hashes())
        for sid in ids:
            assert_same_sample(restored.get_sample(sid).sample, store.get_sample(sid).sample, skip=())
            assert restored.get_sample(sid).version == store.get_sample(sid).version
        assert restored.verify_user("alice", "pw") is not None
        assert [f.key for f in restored.failures()] == ["ref:9"]
        assert restored.check()["ok"]
        second = tmp_path / ("again-" + name)
        restored.dump(second)
        # the restored store dumps to the same records, but for the header and the import's own audit line
        a, b = _records(first), _records(second)
        assert b[-2]["action"] == "import"
        strip = lambda recs: [r for r in recs[1:] if r["type"] != "end"]  # noqa: E731
        assert strip(a) == strip(b)[:-1]
        # importing it again adds no sample twice
        again = restored.import_(first)
        assert "sample" not in again["added"] and again["skipped"]["sample"] == 4
        assert restored.count(failed=None) == 4


def test_truncated_or_foreign_dumps_are_refused_whole(store: Store, tmp_path: Path) -> None:
    _fill(store)
    full = tmp_path / "d.jsonl"
    store.dump(full)
    lines = full.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:-3]))
    with Store.open(tmp_path / "r.sqlite", durable=False) as restored:
        with pytest.raises(DumpError, match="truncated"):
            restored.import_(cut)
        assert restored.count(failed=None) == 0 and restored.audit() == [] and restored.list_users() == []
        (tmp_path / "x.jsonl").write_text('{"type": "sample"}\n')
        with pytest.raises(DumpError, match="not a refcoco-edit store dump"):
            restored.import_(tmp_path / "x.jsonl")
        # an image whose pixels do not match its name is refused before any row is imported
        blob = json.loads(lines[1])
        assert blob["type"] == "blob"
        blob["hash"] = "0" * 64
        (tmp_path / "bad.jsonl").write_text(lines[0] + json.dumps(blob) + "\n" + "".join(lines[2:]))
        with pytest.raises(DataError, match="hash to"):
            restored.import_(tmp_path / "bad.jsonl")
        assert restored.count(failed=None) == 0 and list(restored.blobs.all_hashes()) == []
        header = json.loads(lines[0])
        header["schema_version"] = LATEST + 1
        (tmp_path / "new.jsonl").write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
        with pytest.raises(DumpError, match="newer"):
            restored.import_(tmp_path / "new.jsonl")


def test_check_reports_a_missing_image(store: Store) -> None:
    sid = store.add_sample(make_sample(1), user="u")
    assert store.check(verify_blobs=True)["ok"]
    digest = store.get_sample(sid, images=False).blobs["source_image"]
    store.blobs.path(digest).unlink()
    report = store.check()
    assert not report["ok"] and report["missing_blobs"] == [digest]
    with pytest.raises(DataError, match="missing"):
        store.get_sample(sid)


# ---------------------------------------------------------------------------- several processes
def test_concurrent_increments_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with Store.open(path, durable=False) as s:
        sid = s.add_sample(make_sample(1), user="setup")
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        # returns each worker's retries (usually some; the scheduler decides, so they are not asserted)
        pool.starmap(increment, [(str(path), sid, 25, f"w{i}") for i in range(4)])
    with Store.open(path, create=False) as s:
        rec = s.get_sample(sid, images=False)
        assert rec.sample.generation["count"] == 100 and rec.version == 101
        updates = [e for e in s.audit(sid) if e.action == "update"]
        assert len(updates) == 100 and {e.user for e in updates} == {"w0", "w1", "w2", "w3"}
        counts = [e.diff["generation"][1]["count"] for e in updates]
        assert counts == list(range(1, 101))  # each write saw the one before it


def test_racing_inserts_of_one_key_store_one_row(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    Store.open(path, durable=False).close()
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager, ctx.Pool(4) as pool:
        barrier = manager.Barrier(4)
        results = pool.starmap(race_insert, [(str(path), "ref:7|edit:replace", seed, barrier) for seed in range(4)])
    assert sorted(results) == ["duplicate"] * 3 + ["won"]
    with Store.open(path, create=False) as s:
        assert s.count() == 1
        assert s._conn.execute("SELECT COUNT(*) FROM samples WHERE key = 'ref:7|edit:replace'").fetchone()[0] == 1
        assert [e.action for e in s.audit()] == ["add"]


# ---------------------------------------------------------------------------- processes killed mid-write
def _worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.refcoco_edit.store_worker", *args], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)


def _assert_intact(path: Path, lines: list[str]) -> None:
    with Store.open(path, create=False) as s:
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        report = s.check()
        assert report["ok"] and report["missing_blobs"] == [], report
        for line in lines:
            kind, sid, *rest = line.split()
            rec = s.get_sample(sid)  # reads the images too
            assert rec.sample.source_image.size == (16, 16)
            if kind == "updated":
                assert rec.version >= int(rest[0]) and rec.sample.generation["count"] == 1
            if kind == "candidate":
                assert len(s.get_candidates(sid)) == 1


def test_sigkill_during_a_write_loop_keeps_every_commit(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite"
    committed: list[str] = []
    for round_ in range(3):  # kill, reopen and go on, three times
        proc = _worker("crash", str(path))
        want = len(committed) + 8 + 5 * round_
        got = []
        for line in proc.stdout:
            got.append(line.strip())
            if len(committed) + len(got) >= want:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        # whatever it printed before dying was committed, too
        committed += got + [ln.strip() for ln in proc.stdout.read().splitlines() if ln.strip()]
        proc.stdout.close()
        _assert_intact(path, committed)
    added = [ln.split()[1] for ln in committed if ln.startswith("added")]
    assert len(added) == len(set(added)) >= 9


@pytest.mark.parametrize("where", ["tx", "blob"])
def test_death_inside_a_transaction_or_an_image_write(tmp_path: Path, where: str) -> None:
    path = tmp_path / "d.sqlite"
    proc = _worker("die", str(path), where)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and "not reached" not in out
    lines = out.split("\n")[:-1]
    assert len(lines) == 2
    _assert_intact(path, lines)
    with Store.open(path, create=False) as s:
        assert s.count() == 2 and not s.has_key("die:2")
        assert [e.action for e in s.audit()] == ["add", "add"]
        assert s.check()["temp_files"] == (1 if where == "blob" else 0)
        assert s.blobs.clean_temp(max_age_s=0) == (1 if where == "blob" else 0)
        assert list(s.blobs.tmp.iterdir()) == []
        s.add_sample(make_sample(2), user="after", key="die:2")  # the work can be redone
        assert s.count() == 3


# ---------------------------------------------------------------------------- command line
def test_store_command(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cli.sqlite"
    with Store.open(path, durable=False) as s:
        ids = _fill(s)
    base = ["store", "--store", str(path)]
    assert main([*base, "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["samples"] == 3 and stats["failed"] == 1 and stats["by_status"] == {"accepted": 1, "candidate": 2}
    assert main([*base, "list", "--json", "--status", "candidate"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["sample_id"] for r in rows] == [ids[0], ids[2]] and rows[0]["version"] == 2
    assert main([*base, "list", "--failed"]) == 0
    assert "corrupt image" in capsys.readouterr().out
    assert main([*base, "show", ids[0], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source_mask"]["area"] == int(make_sample(0).source_mask.sum())
    assert Path(info["source_image"]["file"]).is_file()
    assert [c["chosen"] for c in info["candidates"]] == [False, True]
    assert [h["action"] for h in info["history"]] == ["add", "add_candidates", "choose_candidate"]
    assert main([*base, "stats"]) == 0 and "accepted=1" in capsys.readouterr().out
    assert main([*base, "check"]) == 0 and capsys.readouterr().out.startswith("ok")
    dump = tmp_path / "b.jsonl.gz"
    assert main([*base, "dump", str(dump)]) == 0
    capsys.readouterr()
    assert main(["store", "--store", str(tmp_path / "new.sqlite"), "import", str(dump)]) == 0
    assert json.loads(capsys.readouterr().out)["added"]["sample"] == 4
    for argv, msg in [([*base, "show", "nope"], "no sample 'nope'"),
                      (["store", "--store", str(tmp_path / "none.sqlite"), "stats"], "no store at"),
                      ([*base, "import", str(tmp_path / "missing.jsonl")], "no dump file")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err


def test_cli_help_does_not_import_the_store() -> None:
    code = ("import sys; from refcoco_edit.cli import build_parser; build_parser(); "
            "print(any(m.startswith('refcoco_edit.store') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
