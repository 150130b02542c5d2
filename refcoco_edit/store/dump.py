"""Backups of a store as one JSON-lines file, and restoring them.

One self-contained file (gzip-compressed when its name ends in `.gz`), so a back-up is a single copy:

    {"type": "header", "format": "refcoco-edit-store-dump", "format_version": 1, "schema_version": 2, ...}
    {"type": "blob", "hash": "<sha256 of pixels>", "png": "<base64 PNG bytes>"}   each image once
    {"type": "user", ...}  {"type": "sample", ...}  {"type": "candidate", ...}  {"type": "review", ...}
    {"type": "assignment", ...}  {"type": "audit", ...}
    {"type": "end", "counts": {"sample": 12, ...}}

Rows keep every column (versions, keys, build errors, timestamps, password hashes); JSON columns
(masks as COCO RLE, spans, generation, audit diffs) appear as JSON values, images as blob hashes.
The dump reads one snapshot, so it is consistent while others keep writing; it is written to a
temporary name and renamed, so a failed dump never leaves a half file under the final name. A
file without its `end` line (truncated) is refused on import, and nothing is imported.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from refcoco_edit.io import atomic_path
from refcoco_edit.store.encoding import dumps, now_iso
from refcoco_edit.store.errors import DumpError
from refcoco_edit.store.migrations import LATEST, read_version
from refcoco_edit.store.rules import invalid_rows

if TYPE_CHECKING:
    from refcoco_edit.store.db import Store

log = logging.getLogger(__name__)

FORMAT = "refcoco-edit-store-dump"
FORMAT_VERSION = 1
MAX_NAMED_ROWS = 20  # invalid rows named in a refusal

# table -> (record type, primary key, JSON columns, order)
TABLES: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "users": ("user", "name", (), "name"),
    "samples": ("sample", "sample_id", ("source_mask", "edit_mask", "referring_spans", "edit_spans", "generation"),
                "rowid"),
    "candidates": ("candidate", "candidate_id", ("edit_mask", "params"), "candidate_id"),
    "reviews": ("review", "review_id", (), "review_id"),
    "assignments": ("assignment", "ref_key", (), "ref_key"),
    "audit": ("audit", "audit_id", ("diff",), "audit_id"),
}
BLOB_PREFIX = '{"type":"blob"'  # how `dumps` starts a blob line (lets the row pass skip them unparsed)
BLOB_QUERY = ("SELECT source_image FROM samples WHERE source_image IS NOT NULL UNION "
              "SELECT edited_image FROM samples WHERE edited_image IS NOT NULL UNION "
              "SELECT image FROM candidates ORDER BY 1")


def _open_write(path: Path, compress: bool) -> IO[str]:
    if compress:
        return io.TextIOWrapper(gzip.open(path, "wb", compresslevel=6), encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def _open_read(path: Path) -> IO[str]:
    if not path.is_file():
        raise DumpError(f"no dump file at {path}")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def dump_store(store: Store, path: Path) -> dict:
    """Write `store` to `path`; the counts of each record type written."""
    conn = store._conn
    counts: Counter[str] = Counter()
    with atomic_path(path) as tmp, _open_write(tmp, compress=path.name.endswith(".gz")) as out:
        def emit(record: dict) -> None:
            out.write(dumps(record))
            out.write("\n")

        conn.execute("BEGIN")  # one snapshot for the whole dump (WAL: writers carry on)
        try:
            emit({"type": "header", "format": FORMAT, "format_version": FORMAT_VERSION,
                  "schema_version": read_version(conn), "created_at": now_iso(), "store": str(store.path)})
            # Every image file, not only those rows refer to now: the audit log names earlier
            # versions' images too, and a back-up should let their history be looked at.
            for digest in store.blobs.all_hashes():
                emit({"type": "blob", "hash": digest,
                      "png": base64.b64encode(store.blobs.read_bytes(digest)).decode("ascii")})
                counts["blob"] += 1
            missing = [d for (d,) in conn.execute(BLOB_QUERY) if not store.blobs.exists(d)]
            if missing:
                log.warning("%d image(s) that rows refer to are missing from %s; the dump lacks them too",
                            len(missing), store.blobs.root)
            for table, (kind, _pk, json_cols, order) in TABLES.items():
                for row in conn.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                    rec = {"type": kind}
                    for name in row.keys():
                        value = row[name]
                        rec[name] = json.loads(value) if (name in json_cols and value is not None) else value
                    emit(rec)
                    counts[kind] += 1
            emit({"type": "end", "counts": dict(counts)})
        finally:
            conn.execute("COMMIT")
    return dict(counts)


def _read_records(path: Path, *, skip_blobs: bool = False) -> Iterator[tuple[int, str, dict]]:
    """(line number, type, record) of every record after the header; raises DumpError on a malformed
    or truncated file (after the last record, so callers must not act on records before that)."""
    seen: Counter[str] = Counter()
    header = ended = False
    with _open_read(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if ended:
                raise DumpError(f"{path}:{lineno}: records after the end line")
            if skip_blobs and header and line.startswith(BLOB_PREFIX):
                seen["blob"] += 1
                continue
            try:
                rec = json.loads(line)
                kind = rec.pop("type")
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as exc:
                raise DumpError(f"{path}:{lineno}: not a dump record ({exc})") from None
            if not header:
                _check_header(path, kind, rec)
                header = True
            elif kind == "end":
                if dict(seen) != rec.get("counts"):
                    raise DumpError(f"{path}: the end line counts {rec.get('counts')}, the file holds {dict(seen)}")
                ended = True
            else:
                seen[kind] += 1
                yield lineno, kind, rec
    if not ended:
        raise DumpError(f"{path} is truncated (no end line); nothing was imported")


def import_dump(store: Store, path: Path, user: str) -> dict:
    """Restore `path` into `store`; counts of records added and skipped.

    Three passes: the file's structure and end-line counts (so a truncated file writes nothing), the
    images (checked against their names, written outside any transaction so other writers are not
    held up), then every row in one transaction: all or nothing. The rows added are checked against
    the rules the store applies to its own writes (`rules.py`) before the commit; one that breaks
    them and the whole dump is refused, naming the rows.
    """
    conn = store._conn
    columns = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in TABLES}
    kinds = {kind: table for table, (kind, *_rest) in TABLES.items()}
    added: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for _ in _read_records(path, skip_blobs=True):
        pass
    for lineno, kind, rec in _read_records(path):
        if kind == "blob":
            try:
                data = base64.b64decode(rec["png"], validate=True)
                digest = rec["hash"]
            except (KeyError, ValueError, TypeError) as exc:
                raise DumpError(f"{path}:{lineno}: bad blob record ({exc})") from None
            store.blobs.put_png(digest, data)
            added["blob"] += 1
    imported_samples: set[str] = set()
    imported: dict[str, set] = {}
    with store._tx():
        for lineno, kind, rec in _read_records(path, skip_blobs=True):
            if kind == "blob":
                continue
            table = kinds.get(kind)
            if table is None:
                raise DumpError(f"{path}:{lineno}: unknown record type {kind!r}")
            unknown = set(rec) - set(columns[table])
            if unknown:
                raise DumpError(f"{path}:{lineno}: {kind} has columns this store lacks: {', '.join(sorted(unknown))}")
            try:
                ok, name = _import_row(conn, table, rec, imported_samples)
            except (KeyError, TypeError, sqlite3.IntegrityError, sqlite3.InterfaceError,
                    sqlite3.ProgrammingError) as exc:
                raise DumpError(f"{path}:{lineno}: bad {kind} record ({exc})") from None
            if ok:
                added[kind] += 1
                imported.setdefault(table, set()).add(name)
            else:
                skipped[kind] += 1
        invalid = list(invalid_rows(store, imported))
        if invalid:
            shown = "; ".join(invalid[:MAX_NAMED_ROWS]) + (f" (and {len(invalid) - MAX_NAMED_ROWS} more)"
                                                          if len(invalid) > MAX_NAMED_ROWS else "")
            raise DumpError(f"{path}: refused, {len(invalid)} row(s) break the store's rules, nothing was "
                            f"imported: {shown}")
        missing = sorted({d for (d,) in conn.execute(BLOB_QUERY) if not store.blobs.exists(d)})
        if missing:
            log.warning("%d image(s) that rows refer to are in neither %s nor the store", len(missing), path)
        store._audit(user, "import", None, {"file": str(path), "added": dict(added), "skipped": dict(skipped)})
    return {"added": dict(added), "skipped": dict(skipped), "missing_blobs": len(missing)}


def _check_header(path: Path, kind: str, rec: dict) -> None:
    if kind != "header" or rec.get("format") != FORMAT:
        raise DumpError(f"{path} is not a refcoco-edit store dump")
    if rec.get("format_version", 0) > FORMAT_VERSION or rec.get("schema_version", 0) > LATEST:
        raise DumpError(f"{path} was written by a newer refcoco-edit (schema version {rec.get('schema_version')}, "
                        f"this one reads up to {LATEST}); upgrade to import it")


def _import_row(conn: Any, table: str, rec: dict, imported_samples: set[str]) -> tuple[bool, Any]:
    """Insert one dumped row unless it is already here (or belongs to a sample that was skipped):
    (inserted?, the inserted row's name as `rules.NAMES` gives it)."""
    _kind, pk, json_cols, _order = TABLES[table]
    values = {k: (dumps(v) if k in json_cols and v is not None else v) for k, v in rec.items()}
    exists = lambda sql, params: conn.execute(sql, params).fetchone() is not None  # noqa: E731
    if table == "samples":
        if exists("SELECT 1 FROM samples WHERE sample_id = ?", (values["sample_id"],)) or (
                values.get("key") is not None and exists("SELECT 1 FROM samples WHERE key = ?", (values["key"],))):
            return False, None
        imported_samples.add(values["sample_id"])
    elif table in ("candidates", "reviews"):
        if values.get("sample_id") not in imported_samples:
            return False, None
    elif table == "audit":
        sid = values.get("sample_id")
        if sid is not None and sid not in imported_samples:
            return False, None
        if sid is None and exists("SELECT 1 FROM audit WHERE sample_id IS NULL AND ts = ? AND user = ? AND "
                                  "action = ? AND diff = ?",
                                  (values["ts"], values["user"], values["action"], values["diff"])):
            return False, None
    elif exists(f"SELECT 1 FROM {table} WHERE {pk} = ?", (values[pk],)):  # users, assignments
        return False, None
    if pk.endswith("_id") and table != "samples":
        # keep the dumped row id when it is free here (an exact restore), else take a new one
        if exists(f"SELECT 1 FROM {table} WHERE {pk} = ?", (values[pk],)):
            values.pop(pk)
    names = list(values)
    cur = conn.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                       list(values.values()))
    return True, (values[pk] if pk in values else cur.lastrowid)
