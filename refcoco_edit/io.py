"""Writing files so that a reader never sees half of one, and the one JSON encoding the toolkit writes.

Every file another process may read while it is written (a resumed run, the app, a concurrent shard)
is written to a temporary file beside it and renamed over it (`os.replace` is atomic on one file
system). Temporary names are `.<name>.<unique>.tmp`, so a rerun can recognise and remove what a
killed writer left. JSON goes through `json_default`, which turns numpy/torch scalars and arrays and
paths into plain values and refuses anything else, so no object is written as its `repr`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def json_default(obj: Any) -> Any:
    """`json.dumps(default=...)` for the values the toolkit records: paths, numpy and torch values."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalars and arrays, torch tensors
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any, **kw: Any) -> str:
    """JSON text with `json_default`, non-ASCII kept as it is."""
    return json.dumps(obj, ensure_ascii=False, default=json_default, **kw)


@contextmanager
def atomic_path(path: Path | str, *, tmp_dir: Path | None = None, durable: bool = False) -> Iterator[Path]:
    """A temporary path to write; on success it replaces `path`, on error it is removed.

    `tmp_dir` (same file system) holds the temporary file instead of `path`'s folder, for stores that
    sweep one folder of leftovers; `durable` fsyncs the file before the rename and the folder after,
    so the write survives a power cut, not only a killed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    where = path.parent if tmp_dir is None else Path(tmp_dir)
    where.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=where)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            tmp.chmod(_mode_for(path, 0o666))
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        try:
            _fsync(path.parent)
        except OSError:  # some file systems cannot sync a folder; the file itself is synced
            pass


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it, which
    would race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _mode_for(path: Path, base: int) -> int:
    """The permissions a file written in place would get: those of the file it replaces, else `base`
    less the umask (mkstemp and mkdtemp make private files, which shared caches and outputs must not be)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return base & ~_umask()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` and move the result to `path` (nothing at `path` changes if `write` fails)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path | str, obj: Any, **kw: Any) -> Path:
    return atomic_write_text(path, dumps(obj, **kw))


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; on success it becomes `path` (which must not exist),
    on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(_mode_for(path, 0o777))
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_once(dest: Path | str, make: Callable[[Path], Any]) -> Path:
    """The folder `dest`, made by `make(tmp)` on first use: under a file lock (several processes, e.g.
    test workers or ranks of one run, build it once) into a temporary folder renamed into place, so a
    folder that exists is complete. Temporary folders a killed build left are removed first."""
    dest = Path(dest)
    if dest.is_dir():
        return dest
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f".{dest.name}.lock")):
        if dest.is_dir():  # another process built it while we waited
            return dest
        # left by a killed build (we hold the lock); earlier versions named them `.<name>.tmp-*`
        for pattern in (f".{dest.name}.*.tmp", f".{dest.name}.tmp-*"):
            for stale in dest.parent.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(dest) as tmp:
            make(tmp)
    return dest
