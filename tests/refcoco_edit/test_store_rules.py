"""Rows that break the store's rules: refused on import (naming them), found by `store check`, and
named by every command that meets one (list, show, export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refcoco_edit.cli import main
from refcoco_edit.errors import DataError
from refcoco_edit.store import DumpError, Store
from tests.refcoco_edit.store_worker import make_sample
from tests.refcoco_edit.test_store import _fill, _records

BROKEN_MASK = {"size": [16, 16], "counts": "0000"}  # runs that do not cover the image


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _corrupt(records: list[dict], kind: str, index: int, **changes) -> list[dict]:
    out = [dict(r) for r in records]
    rows = [r for r in out if r["type"] == kind]
    rows[index].update(changes)
    return out


@pytest.fixture()
def dump(tmp_path: Path) -> tuple[list[dict], list[str]]:
    with Store.open(tmp_path / "src.sqlite", durable=False) as store:
        ids = _fill(store)
        store.dump(tmp_path / "dump.jsonl")
    return _records(tmp_path / "dump.jsonl"), ids


@pytest.mark.parametrize(("kind", "index", "changes", "message"), [
    ("sample", 0, {"status": "published"}, "status 'published' is not one of"),
    ("sample", 1, {"version": 1.5}, "version 1.5 is not a positive integer"),
    ("sample", 1, {"version": "two"}, "version 'two' is not a positive integer"),
    ("sample", 2, {"annotator": " ann"}, "annotator: bad user name ' ann'"),
    ("sample", 2, {"source_mask": BROKEN_MASK}, "source_mask does not decode"),
    ("sample", 2, {"edit_mask": {"size": [4, 4], "counts": [16]}}, "edit_mask is 4x4, the source image 16x16"),
    ("sample", 2, {"prompt": ""}, "cannot be candidate"),
    ("sample", 2, {"image_id": "seven"}, "image_id 'seven' is not an integer"),
    ("user", 0, {"role": "root"}, "role 'root' is not one of"),
    ("user", 0, {"name": "alice "}, "bad user name 'alice '"),
    ("user", 0, {"password_hash": "plain"}, "password_hash is not a scrypt hash"),
    ("review", 0, {"decision": "maybe"}, "decision 'maybe' is not one of"),
    ("candidate", 1, {"edit_mask": BROKEN_MASK}, "edit_mask does not decode"),
    ("assignment", 0, {"user": ""}, "user: bad user name ''"),
])
def test_import_refuses_rows_that_break_the_rules(dump, tmp_path: Path, kind, index, changes, message) -> None:
    records, _ = dump
    bad = tmp_path / "bad.jsonl"
    _write(bad, _corrupt(records, kind, index, **changes))
    with Store.open(tmp_path / "dst.sqlite", durable=False) as store:
        with pytest.raises(DumpError, match=rf"refused, 1 row\(s\) break the store's rules.*{kind} .+?: .*{message}"):
            store.import_(bad)
        assert store.count(failed=None) == 0 and store.list_users() == []  # nothing imported
        assert store.import_(tmp_path / "dump.jsonl")["added"]["sample"] == 4  # the good dump still imports


def test_check_finds_what_an_earlier_import_let_in_and_errors_name_the_sample(dump, tmp_path: Path, capsys) -> None:
    _, ids = dump
    path = tmp_path / "src.sqlite"
    with Store.open(path, durable=False) as store:
        store._conn.execute("UPDATE samples SET status = 'weird', version = 1.5 WHERE sample_id = ?", (ids[0],))
        store._conn.execute("UPDATE samples SET source_mask = ? WHERE sample_id = ?",
                            (json.dumps(BROKEN_MASK), ids[1]))
        store._conn.execute("UPDATE users SET role = 'god' WHERE name = 'alice'")
        report = store.check()
        assert not report["ok"]
        assert [r.split(":")[0] for r in report["invalid_rows"]] == ["user alice", f"sample {ids[0]}",
                                                                       f"sample {ids[1]}"]
        with pytest.raises(DataError, match=f"sample {ids[1]}: source_mask: "):
            store.get_sample(ids[1])
    assert main(["store", "--store", str(path), "check"]) == 1
    assert main(["store", "--store", str(path), "show", ids[1]]) != 0
    assert f"sample {ids[1]}: source_mask" in capsys.readouterr().err
    assert main(["store", "--store", str(path), "list"]) != 0
    assert f"sample {ids[1]}: source_mask" in capsys.readouterr().err


def test_export_names_the_sample_with_a_broken_mask(tmp_path: Path) -> None:
    from refcoco_edit.dataset.export import export_store

    path = tmp_path / "s.sqlite"
    with Store.open(path, durable=False) as store:
        sids = [store.add_sample(make_sample(i, status="accepted"), user="a") for i in range(2)]
        store._conn.execute("UPDATE samples SET edit_mask = ? WHERE sample_id = ?", (json.dumps(BROKEN_MASK), sids[1]))
    with pytest.raises(DataError, match=f"sample {sids[1]}: edit_mask: "):
        export_store(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
