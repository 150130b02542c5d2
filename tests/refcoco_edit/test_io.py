"""refcoco_edit.io: atomic writes leave either the old file or the new one, with ordinary permissions."""

from __future__ import annotations

import json
import os
import stat
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from refcoco_edit.io import atomic_dir, atomic_path, atomic_write_json, atomic_write_text, dumps


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_files_and_folders_follow_the_umask(tmp_path: Path, umask_022) -> None:
    f = atomic_write_text(tmp_path / "a.txt", "x")
    assert _mode(f) == 0o644  # mkstemp alone would leave 0600
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("1")
    assert _mode(tmp_path / "d") == 0o755  # mkdtemp alone would leave 0700


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path, umask_022) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_json_encoder_turns_numpy_and_paths_into_plain_values(tmp_path: Path) -> None:
    obj = {"i": np.int64(3), "f": np.float32(0.5), "a": np.arange(2), "p": Path("x/y")}
    back = json.loads(atomic_write_json(tmp_path / "o.json", obj).read_text())
    assert back == {"i": 3, "f": 0.5, "a": [0, 1], "p": "x/y"}
    assert json.loads(dumps(obj)) == back


def test_json_encoder_refuses_objects_instead_of_writing_their_repr(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="date is not JSON serialisable"):
        atomic_write_json(tmp_path / "o.json", {"d": date(2026, 1, 2)})
    assert not (tmp_path / "o.json").exists()


def test_build_once_builds_one_complete_folder_for_concurrent_callers(tmp_path: Path) -> None:
    import threading
    import time

    from refcoco_edit.io import build_once

    dest = tmp_path / "cache" / "model"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ".model.abc.tmp").mkdir()  # what a killed build leaves
    calls: list[int] = []

    def make(tmp: Path) -> None:
        calls.append(1)
        (tmp / "a").write_text("1")
        time.sleep(0.2)  # others arrive while the first one builds
        (tmp / "b").write_text("2")

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(build_once(dest, make))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and results == [dest] * 4
    assert sorted(p.name for p in dest.iterdir()) == ["a", "b"]
    assert not list((tmp_path / "cache").glob(".model.*.tmp"))


def test_build_once_leaves_nothing_when_the_build_fails(tmp_path: Path) -> None:
    from refcoco_edit.io import build_once

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "m", broken)
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*.tmp"))
