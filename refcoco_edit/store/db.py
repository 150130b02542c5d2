"""The annotation store: RefCOCO-Edit samples, candidates, reviews, users and an audit log in SQLite.

Why it is built this way:
- SQLite in WAL mode: readers never block the writer, one file to copy, nothing to run.
- Every change is one `BEGIN IMMEDIATE` transaction that also writes its audit row, so a change and
  its record commit together or not at all, and a process killed at any point leaves the last
  committed state (WAL recovery drops a half-written transaction).
- Samples carry a `version`; a writer says which version it read (`expected_version`) and gets a
  `ConflictError` when someone else wrote first, instead of silently overwriting their work.
- Images go to a content-addressed folder (`blobs.py`) *before* the transaction that refers to them,
  so a committed row never points at a missing file; a killed writer can only leave an unreferenced
  image or a temporary file, both harmless.

Status rules: `draft` and `rejected` samples may be incomplete (no images or masks yet, spans not
finished); `candidate` and `accepted` samples must pass `schema.validate`, on add and on every change.

A `Store` wraps one connection; it may be shared by the threads of one process (calls are
serialised by a lock) but not across `fork`: open one per process.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image

from refcoco_edit.errors import DataError, InputError, RefcocoEditError
from refcoco_edit.schema import IMAGE_FIELDS, MASK_FIELDS, Sample, validate
from refcoco_edit.store import background, rle, rules
from refcoco_edit.store.blobs import BlobStore
from refcoco_edit.store.encoding import dumps, now_iso
from refcoco_edit.store.errors import ConflictError, DuplicateKeyError, NotFoundError, StoreError
from refcoco_edit.store.migrations import migrate, read_version
from refcoco_edit.store.passwords import hash_password, verify_password

log = logging.getLogger(__name__)

ROLES = rules.ROLES
DECISIONS = rules.DECISIONS
VALIDATED_STATUSES = rules.VALIDATED_STATUSES
JSON_FIELDS = ("referring_spans", "edit_spans", "generation")
# Sample fields a change may touch; ids of the row itself and its timestamps are the store's.
CHANGEABLE = tuple(n for n in Sample.field_names() if n not in ("sample_id", "created_at", "updated_at"))
FILTERS = ("status", "split", "edit_type", "pipeline", "annotator")
MAX_USER_NAME = rules.MAX_USER_NAME
user_name_problem = rules.user_name_problem
PAGE = 256


def key_sample_id(key: str) -> str:
    """The sample id a work key gets: the same key gives the same id in every store."""
    return "k" + sha256(key.encode("utf-8")).hexdigest()[:23]


@dataclass
class Record:
    """A stored sample with the store's bookkeeping: `version` to pass back on change, work `key`,
    build `error` (failed-build placeholders only) and the blob hashes of its images."""

    sample: Sample
    version: int
    key: str | None = None
    error: str | None = None
    blobs: dict[str, str | None] = field(default_factory=dict)


@dataclass
class Candidate:
    """One generated edit for a sample; `choose_candidate` copies it into the sample."""

    image: Image  # RGB
    edit_mask: np.ndarray | None = None
    seed: int | None = None
    params: dict = field(default_factory=dict)
    model: str = ""
    score: float | None = None
    chosen: bool = False
    candidate_id: int | None = None
    sample_id: str = ""
    image_hash: str = ""
    created_at: str = ""


@dataclass
class Review:
    review_id: int
    sample_id: str
    reviewer: str
    decision: str
    comment: str
    created_at: str


@dataclass
class User:
    """An account. `sessions_valid_from` (seconds since the epoch): sign-in sessions begun earlier
    are void; it moves forward when the password changes or the account is disabled."""

    name: str
    role: str
    created_at: str
    has_password: bool = False
    disabled: bool = False
    sessions_valid_from: float = 0.0

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> User:
        return cls(r["name"], r["role"], r["created_at"], r["password_hash"] is not None, bool(r["disabled"]),
                   float(r["sessions_valid_from"]))


@dataclass
class Assignment:
    ref_key: str
    user: str
    expires_at: float  # seconds since the epoch
    created_at: str


@dataclass
class AuditEntry:
    audit_id: int
    ts: str
    user: str
    action: str
    sample_id: str | None
    diff: dict


@dataclass
class Failure:
    key: str
    sample_id: str
    error: str
    updated_at: str


def _locked(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Store:
    """An annotation store: `<path>` (SQLite) and `<path>.blobs/` (images)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, blobs: BlobStore) -> None:
        self.path = path
        self.blobs = blobs
        self._conn = conn
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: Path | str, *, create: bool = True, durable: bool = True, timeout_s: float = 60.0,
             upto_version: int | None = None) -> Store:
        """Open (and migrate to the latest schema) the store at `path`, creating it when asked.

        `durable`: fsync every commit and image (synchronous=FULL), so a power cut loses nothing
        committed; without it (synchronous=NORMAL) only a process crash is survived losslessly.
        `timeout_s`: how long a writer waits for another writer's lock before giving up.
        `upto_version` is for tests of migrations: stop at an older schema version.
        """
        path = Path(path)
        if path.is_dir():
            raise StoreError(f"{path} is a folder; a store is a file (its images go to {path}.blobs/)")
        if not path.exists():
            if not create:
                raise StoreError(f"no store at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{path}: the file system does not support SQLite's WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn, upto=upto_version, where=f"store {path}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{path} is not a readable store: {exc}") from None
        except BaseException:
            conn.close()
            raise
        blobs = BlobStore(Path(f"{path}.blobs"), durable=durable)
        blobs.ensure()
        blobs.clean_temp()
        return cls(path, conn, blobs)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return read_version(self._conn)

    # ------------------------------------------------------------------ transactions and audit
    def _tx(self) -> _Transaction:
        return _Transaction(self._conn)

    def _audit(self, user: str, action: str, sample_id: str | None, diff: dict) -> None:
        self._conn.execute("INSERT INTO audit (ts, user, action, sample_id, diff) VALUES (?, ?, ?, ?, ?)",
                           (now_iso(), user, action, sample_id, dumps(diff)))

    # ------------------------------------------------------------------ encoding
    def _encode(self, values: dict[str, Any]) -> dict[str, Any]:
        """Sample field values -> column values (images written to blobs, masks to RLE JSON)."""
        cols: dict[str, Any] = {}
        for name, value in values.items():
            if name in IMAGE_FIELDS:
                cols[name] = None if value is None else self.blobs.put(value)
            elif name in MASK_FIELDS:
                cols[name] = rle.to_json(value)
            elif name in JSON_FIELDS:
                cols[name] = dumps(value if value is not None else ({} if name == "generation" else []))
            elif name in ("image_id", "ref_id", "ann_id"):
                try:
                    cols[name] = int(value)
                except (TypeError, ValueError):
                    raise InputError(f"{name} must be an integer, got {value!r}") from None
            else:
                cols[name] = "" if value is None else str(value)
        return cols

    def _sample_from_row(self, row: Any, images: bool = True) -> Sample:
        """The row as a `Sample`; a column that does not decode raises a `DataError` naming the sample."""
        get = row.__getitem__
        kwargs: dict[str, Any] = {}
        for name in Sample.field_names():
            value = get(name)
            try:
                if name in IMAGE_FIELDS:
                    kwargs[name] = self.blobs.get(value) if (images and value) else None
                elif name in MASK_FIELDS:
                    kwargs[name] = rle.from_json(value)
                elif name in JSON_FIELDS:
                    kwargs[name] = json.loads(value)
                else:
                    kwargs[name] = value
            except (RefcocoEditError, TypeError, ValueError) as exc:
                raise DataError(f"sample {get('sample_id')}: {name}: {exc}") from None
        return Sample(**kwargs)

    def _record(self, row: sqlite3.Row, images: bool = True) -> Record:
        return Record(sample=self._sample_from_row(row, images), version=row["version"], key=row["key"],
                      error=row["error"], blobs={n: row[n] for n in IMAGE_FIELDS})

    @staticmethod
    def _check_enums(values: dict[str, Any]) -> None:
        problems = rules.enum_problems(values)
        if problems:
            raise InputError(problems[0])

    @staticmethod
    def _require_valid(sample: Sample) -> None:
        problems = validate(sample)
        if problems:
            raise InputError(f"sample {sample.sample_id or '(new)'} cannot be {sample.status}: " + "; ".join(problems))

    # ------------------------------------------------------------------ samples
    @_locked
    def add_sample(self, sample: Sample, user: str, key: str | None = None) -> str:
        """Store a new sample and return its id (generated from `key`, or at random, when empty).

        A `key` that is already stored raises `DuplicateKeyError` (naming the stored sample), so a
        builder racing another one, or resuming, never stores a unit of work twice. A failed-build
        placeholder with the same key (`record_failure`) is replaced.
        """
        values = {n: getattr(sample, n) for n in Sample.field_names()}
        self._check_enums(values)
        if sample.status in VALIDATED_STATUSES:
            self._require_valid(sample)
        background.for_new(values)  # I_e == I_s outside M_e (see store/background.py)
        sample_id = sample.sample_id or (key_sample_id(key) if key else secrets.token_hex(12))
        stamp = now_iso()
        values.update(sample_id=sample_id, created_at=sample.created_at or stamp, updated_at=stamp)
        cols = self._encode(values)
        with self._tx():
            version = 1
            if key is not None:
                row = self._conn.execute("SELECT sample_id, error, version FROM samples WHERE key = ?",
                                         (key,)).fetchone()
                if row is not None and row["error"] is None:
                    raise DuplicateKeyError("key", key, row["sample_id"])
                if row is not None:
                    self._conn.execute("DELETE FROM samples WHERE sample_id = ?", (row["sample_id"],))
                    if row["sample_id"] == sample_id:
                        version = row["version"] + 1  # versions of one id only ever grow
            names = [*cols, "key", "version", "error"]
            try:
                self._conn.execute(
                    f"INSERT INTO samples ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                    [*cols.values(), key, version, None])
            except sqlite3.IntegrityError:
                raise DuplicateKeyError("sample id", sample_id, sample_id) from None
            diff = {n: [None, _readable(n, v)] for n, v in cols.items() if n != "sample_id" and v not in ("", None)}
            if key is not None:
                diff["key"] = [None, key]
            self._audit(user, "add", sample_id, diff)
        return sample_id

    def _row(self, sample_id: str) -> sqlite3.Row:
        row = self._conn.execute("SELECT * FROM samples WHERE sample_id = ?", (sample_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no sample {sample_id!r} in store {self.path}")
        return row

    @_locked
    def get_sample(self, sample_id: str, *, images: bool = True) -> Record:
        """The sample and its version; `images=False` skips decoding the images (hashes in `.blobs`)."""
        return self._record(self._row(sample_id), images)

    @_locked
    def update_sample(self, sample_id: str, changes: dict[str, Any], expected_version: int, user: str) -> int:
        """Change fields of a sample that the caller read at `expected_version`; the new version.

        Raises `ConflictError` when the stored version is no longer `expected_version`. A change that
        alters nothing writes nothing and returns the current version.
        """
        unknown = sorted(set(changes) - set(CHANGEABLE))
        if unknown:
            raise InputError(f"cannot change {', '.join(unknown)}; changeable fields: {', '.join(CHANGEABLE)}")
        return self._change(sample_id, dict(changes), expected_version, user, "update")

    def _change(self, sample_id: str, changes: dict[str, Any], expected_version: int, user: str, action: str,
                also: Callable[[], dict] | None = None) -> int:
        self._check_enums(changes)
        before = self._row(sample_id)
        if before["version"] != expected_version:
            raise ConflictError(sample_id, expected_version, before["version"])
        background.for_change(self, before, changes)  # I_e == I_s outside M_e (see store/background.py)
        cols = self._encode(changes)
        if changes.get("status", before["status"]) in VALIDATED_STATUSES:
            merged = self._sample_from_row({**dict(before), **cols})
            self._require_valid(merged)
        with self._tx():
            old = self._row(sample_id)
            if old["version"] != expected_version:
                raise ConflictError(sample_id, expected_version, old["version"])
            changed = {n: v for n, v in cols.items() if old[n] != v}
            diff = {n: [_readable(n, old[n]), _readable(n, v)] for n, v in changed.items()}
            if also is not None:
                diff.update(also())
            if not diff:
                return old["version"]
            changed["updated_at"] = now_iso()
            sets = ", ".join(f"{n} = ?" for n in changed)
            cur = self._conn.execute(
                f"UPDATE samples SET {sets}, version = version + 1 WHERE sample_id = ? AND version = ?",
                [*changed.values(), sample_id, expected_version])
            if cur.rowcount != 1:  # cannot happen under the write lock; kept as a guard
                raise ConflictError(sample_id, expected_version, self._row(sample_id)["version"])
            self._audit(user, action, sample_id, diff)
        return expected_version + 1

    @_locked
    def set_status(self, sample_id: str, status: str, user: str, expected_version: int) -> int:
        return self._change(sample_id, {"status": status}, expected_version, user, "set_status")

    def _where(self, filters: dict[str, Any], failed: bool | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for name, value in filters.items():
            if name not in FILTERS:
                raise InputError(f"cannot filter on {name!r}; filters: {', '.join(FILTERS)}")
            if value is not None:
                clauses.append(f"{name} = ?")
                params.append(value)
        if failed is not None:
            clauses.append("error IS NOT NULL" if failed else "error IS NULL")
        return (" AND ".join(clauses) or "1"), params

    def list_samples(self, *, status: str | None = None, split: str | None = None, edit_type: str | None = None,
                     pipeline: str | None = None, annotator: str | None = None, failed: bool | None = False,
                     limit: int | None = None, offset: int = 0, images: bool = True) -> Iterator[Record]:
        """Samples in insertion order, streamed page by page (memory stays flat; other writers are not
        held up). `failed=False` (default) skips failed-build placeholders, True lists only them,
        None lists both."""
        where, params = self._where(dict(status=status, split=split, edit_type=edit_type, pipeline=pipeline,
                                         annotator=annotator), failed)
        left = limit
        last_rowid: int | None = None
        while left is None or left > 0:
            n = PAGE if left is None else min(PAGE, left)
            with self._lock:
                if last_rowid is None:
                    rows = self._conn.execute(
                        f"SELECT rowid AS _rowid, * FROM samples WHERE {where} ORDER BY rowid LIMIT ? OFFSET ?",
                        [*params, n, offset]).fetchall()
                else:
                    rows = self._conn.execute(
                        f"SELECT rowid AS _rowid, * FROM samples WHERE {where} AND rowid > ? ORDER BY rowid LIMIT ?",
                        [*params, last_rowid, n]).fetchall()
                records = [self._record(r, images) for r in rows]
            yield from records
            if len(rows) < n:
                return
            last_rowid = rows[-1]["_rowid"]
            if left is not None:
                left -= len(rows)

    @_locked
    def count(self, *, status: str | None = None, split: str | None = None, edit_type: str | None = None,
              pipeline: str | None = None, annotator: str | None = None, failed: bool | None = False) -> int:
        where, params = self._where(dict(status=status, split=split, edit_type=edit_type, pipeline=pipeline,
                                         annotator=annotator), failed)
        return self._conn.execute(f"SELECT COUNT(*) FROM samples WHERE {where}", params).fetchone()[0]

    @_locked
    def stats(self) -> dict:
        """Counts by status, edit type, pipeline, split and annotator (failed builds apart)."""
        q = self._conn.execute
        with _ReadTransaction(self._conn):
            out: dict[str, Any] = {
                "schema_version": read_version(self._conn),
                "samples": q("SELECT COUNT(*) FROM samples WHERE error IS NULL").fetchone()[0],
                "failed": q("SELECT COUNT(*) FROM samples WHERE error IS NOT NULL").fetchone()[0],
            }
            for name in ("status", "edit_type", "pipeline", "split", "annotator"):
                rows = q(f"SELECT {name}, COUNT(*) FROM samples WHERE error IS NULL GROUP BY {name} ORDER BY {name}")
                out[f"by_{name}"] = {r[0]: r[1] for r in rows}
            out["candidates"] = q("SELECT COUNT(*) FROM candidates").fetchone()[0]
            out["reviews"] = q("SELECT COUNT(*) FROM reviews").fetchone()[0]
            out["users"] = q("SELECT COUNT(*) FROM users").fetchone()[0]
            out["assignments"] = q("SELECT COUNT(*) FROM assignments WHERE expires_at > ?",
                                   (time.time(),)).fetchone()[0]
        return out

    # ------------------------------------------------------------------ builds: keys and failures
    @_locked
    def has_key(self, key: str, *, include_failed: bool = True) -> bool:
        """Whether the unit of work `key` is stored (built, or failed when `include_failed`)."""
        row = self._conn.execute("SELECT error FROM samples WHERE key = ?", (key,)).fetchone()
        return row is not None and (include_failed or row["error"] is None)

    @_locked
    def record_failure(self, key: str, error: str, user: str, **ids: Any) -> str:
        """Record that building `key` failed with `error` (a placeholder sample, status draft, which
        listings skip); `ids` may give image_id, ref_id, ann_id, split, edit_type, pipeline. A later
        `add_sample` with the same key replaces it. Returns the placeholder's sample id."""
        allowed = {"image_id", "ref_id", "ann_id", "split", "edit_type", "pipeline"}
        if set(ids) - allowed:
            raise InputError(f"record_failure takes only {', '.join(sorted(allowed))} besides key and error")
        self._check_enums(ids)
        cols = self._encode(ids)
        stamp = now_iso()
        with self._tx():
            row = self._conn.execute("SELECT sample_id, error FROM samples WHERE key = ?", (key,)).fetchone()
            if row is not None and row["error"] is None:
                raise DuplicateKeyError("key", key, row["sample_id"])
            if row is not None:
                sample_id = row["sample_id"]
                self._conn.execute("UPDATE samples SET error = ?, updated_at = ?, version = version + 1 "
                                   "WHERE sample_id = ?", (error, stamp, sample_id))
            else:
                sample_id = key_sample_id(key)
                names = [*cols, "sample_id", "key", "error", "status", "created_at", "updated_at"]
                self._conn.execute(
                    f"INSERT INTO samples ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                    [*cols.values(), sample_id, key, error, "draft", stamp, stamp])
            self._audit(user, "build_failed", sample_id, {"key": key, "error": error})
        return sample_id

    @_locked
    def failures(self) -> list[Failure]:
        rows = self._conn.execute("SELECT key, sample_id, error, updated_at FROM samples "
                                  "WHERE error IS NOT NULL ORDER BY rowid").fetchall()
        return [Failure(r["key"], r["sample_id"], r["error"], r["updated_at"]) for r in rows]

    # ------------------------------------------------------------------ candidates
    @_locked
    def add_candidates(self, sample_id: str, candidates: list[Candidate], user: str) -> list[int]:
        """Attach generated candidates to a sample (its version does not change); their ids."""
        encoded = []
        for c in candidates:
            if c.image is None:
                raise InputError("a candidate needs an image")
            encoded.append((self.blobs.put(c.image), rle.to_json(c.edit_mask),
                            None if c.seed is None else int(c.seed), dumps(c.params or {}), c.model or "",
                            None if c.score is None else float(c.score), int(bool(c.chosen))))
        stamp = now_iso()
        ids: list[int] = []
        with self._tx():
            self._row(sample_id)
            for values in encoded:
                cur = self._conn.execute(
                    "INSERT INTO candidates (sample_id, image, edit_mask, seed, params, model, score, chosen, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (sample_id, *values, stamp))
                ids.append(int(cur.lastrowid))
            self._audit(user, "add_candidates", sample_id,
                        {"candidates": [{"id": i, "image": v[0], "seed": v[2], "model": v[4], "score": v[5]}
                                        for i, v in zip(ids, encoded)]})
        return ids

    def _candidate(self, row: sqlite3.Row, images: bool) -> Candidate:
        return Candidate(image=self.blobs.get(row["image"]) if images else None,
                         edit_mask=rle.from_json(row["edit_mask"]), seed=row["seed"],
                         params=json.loads(row["params"]), model=row["model"], score=row["score"],
                         chosen=bool(row["chosen"]), candidate_id=row["candidate_id"], sample_id=row["sample_id"],
                         image_hash=row["image"], created_at=row["created_at"])

    @_locked
    def get_candidates(self, sample_id: str, *, images: bool = True) -> list[Candidate]:
        rows = self._conn.execute("SELECT * FROM candidates WHERE sample_id = ? ORDER BY candidate_id",
                                  (sample_id,)).fetchall()
        return [self._candidate(r, images) for r in rows]

    @_locked
    def choose_candidate(self, sample_id: str, candidate_id: int, user: str, expected_version: int) -> int:
        """Make a candidate the sample's reference edit (edited image, edit mask, generation); the
        new version. Only one candidate of a sample is marked chosen."""
        row = self._conn.execute("SELECT * FROM candidates WHERE candidate_id = ? AND sample_id = ?",
                                 (candidate_id, sample_id)).fetchone()
        if row is None:
            raise NotFoundError(f"sample {sample_id!r} has no candidate {candidate_id}")
        cand = self._candidate(row, images=True)
        generation = dict(cand.params)
        generation.setdefault("model", cand.model)
        generation.setdefault("seed", cand.seed)
        changes: dict[str, Any] = {"edited_image": cand.image, "generation": generation}
        if cand.edit_mask is not None:
            changes["edit_mask"] = cand.edit_mask

        def mark() -> dict:
            previous = [r[0] for r in self._conn.execute(
                "SELECT candidate_id FROM candidates WHERE sample_id = ? AND chosen = 1", (sample_id,))]
            self._conn.execute("UPDATE candidates SET chosen = (candidate_id = ?) WHERE sample_id = ?",
                               (candidate_id, sample_id))
            return {} if previous == [candidate_id] else {"chosen_candidate": [previous, candidate_id]}

        return self._change(sample_id, changes, expected_version, user, "choose_candidate", also=mark)

    # ------------------------------------------------------------------ reviews
    @_locked
    def add_review(self, sample_id: str, reviewer: str, decision: str, expected_version: int,
                   comment: str = "") -> int:
        """Record a review and apply it in the same transaction: accept -> accepted (the sample must
        be valid), reject -> rejected, send_back -> draft; the sample's `reviewer` is set. The new version."""
        if decision not in DECISIONS:
            raise InputError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")

        def insert() -> dict:
            cur = self._conn.execute(
                "INSERT INTO reviews (sample_id, reviewer, decision, comment, created_at) VALUES (?, ?, ?, ?, ?)",
                (sample_id, reviewer, decision, comment, now_iso()))
            return {"review": {"id": cur.lastrowid, "decision": decision, "comment": comment}}

        return self._change(sample_id, {"status": DECISIONS[decision], "reviewer": reviewer}, expected_version,
                            reviewer, "review", also=insert)

    @_locked
    def get_reviews(self, sample_id: str) -> list[Review]:
        rows = self._conn.execute("SELECT * FROM reviews WHERE sample_id = ? ORDER BY review_id", (sample_id,))
        return [Review(r["review_id"], r["sample_id"], r["reviewer"], r["decision"], r["comment"], r["created_at"])
                for r in rows]

    # ------------------------------------------------------------------ users
    @_locked
    def add_user(self, name: str, role: str, password: str | None = None, *, user: str = "admin") -> User:
        """Create an account (`password=None`: it cannot log in, e.g. a build bot)."""
        if role not in ROLES:
            raise InputError(f"role {role!r} is not one of {', '.join(ROLES)}")
        problem = user_name_problem(name)
        if problem:
            raise InputError(problem)
        pw = hash_password(password) if password is not None else None
        stamp = now_iso()
        with self._tx():
            try:
                self._conn.execute("INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                                   (name, role, pw, stamp))
            except sqlite3.IntegrityError:
                raise StoreError(f"user {name!r} already exists") from None
            self._audit(user, "add_user", None, {"name": name, "role": role})
        return User(name, role, stamp, pw is not None)

    @_locked
    def set_password(self, name: str, password: str, *, user: str = "admin") -> None:
        """Set `name`'s password; their sign-in sessions begun before now stop working."""
        pw = hash_password(password)
        with self._tx():
            if self._conn.execute("UPDATE users SET password_hash = ?, sessions_valid_from = ? WHERE name = ?",
                                  (pw, time.time(), name)).rowcount != 1:
                raise NotFoundError(f"no user {name!r}")
            self._audit(user, "set_password", None, {"name": name})

    @_locked
    def set_disabled(self, name: str, disabled: bool, *, user: str = "admin") -> None:
        """Disable (or enable again) an account: a disabled one cannot sign in, its sessions end at
        their next request, and its claims on work are released."""
        with self._tx():
            if disabled:
                cur = self._conn.execute("UPDATE users SET disabled = 1, sessions_valid_from = ? WHERE name = ?",
                                         (time.time(), name))
            else:
                cur = self._conn.execute("UPDATE users SET disabled = 0 WHERE name = ?", (name,))
            if cur.rowcount != 1:
                raise NotFoundError(f"no user {name!r}")
            if disabled:
                self._conn.execute("DELETE FROM assignments WHERE user = ?", (name,))
            self._audit(user, "disable_user" if disabled else "enable_user", None, {"name": name})

    @_locked
    def remove_user(self, name: str, *, user: str = "admin") -> None:
        """Delete an account and its claims on work. What it did stays: samples keep their
        annotator and reviewer names, reviews and the audit log keep every entry."""
        with self._tx():
            if self._conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount != 1:
                raise NotFoundError(f"no user {name!r}")
            self._conn.execute("DELETE FROM assignments WHERE user = ?", (name,))
            self._audit(user, "remove_user", None, {"name": name})

    @_locked
    def get_user(self, name: str) -> User | None:
        r = self._conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return None if r is None else User.from_row(r)

    @_locked
    def list_users(self) -> list[User]:
        return [User.from_row(r) for r in self._conn.execute("SELECT * FROM users ORDER BY name")]

    def verify_user(self, name: str, password: str) -> User | None:
        """The user when `password` is theirs and the account is enabled, else None (same answer,
        and the same time spent, for unknown names)."""
        with self._lock:
            r = self._conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        stored = r["password_hash"] if r is not None else None
        # Spend the same time on unknown users, so timing does not reveal which names exist.
        ok = verify_password(password, stored or _dummy_hash())
        if r is None or stored is None or not ok or r["disabled"]:
            return None
        return User.from_row(r)

    # ------------------------------------------------------------------ assignments (the app's queue)
    @_locked
    def assign(self, ref_key: str, user: str, ttl_s: float = 1800.0, *, now: float | None = None) -> bool:
        """Claim `ref_key` for `user` until now + ttl_s; False when someone else holds an unexpired claim.
        Claiming one's own key again extends it."""
        t = time.time() if now is None else now
        with self._tx():
            row = self._conn.execute("SELECT user, expires_at FROM assignments WHERE ref_key = ?",
                                     (ref_key,)).fetchone()
            if row is not None and row["user"] != user and row["expires_at"] > t:
                return False
            self._conn.execute(
                "INSERT INTO assignments (ref_key, user, expires_at, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(ref_key) DO UPDATE SET user = excluded.user, expires_at = excluded.expires_at",
                (ref_key, user, t + ttl_s, now_iso()))
            self._audit(user, "assign", None, {"ref_key": ref_key, "expires_at": t + ttl_s})
        return True

    @_locked
    def release(self, ref_key: str, user: str) -> bool:
        """Drop `user`'s claim on `ref_key`; False when they did not hold it."""
        with self._tx():
            n = self._conn.execute("DELETE FROM assignments WHERE ref_key = ? AND user = ?",
                                   (ref_key, user)).rowcount
            if n:
                self._audit(user, "release", None, {"ref_key": ref_key})
        return bool(n)

    @_locked
    def assignments(self, user: str | None = None, *, now: float | None = None) -> list[Assignment]:
        """Unexpired claims (of one user, or everyone's)."""
        t = time.time() if now is None else now
        sql, params = "SELECT * FROM assignments WHERE expires_at > ?", [t]
        if user is not None:
            sql, params = sql + " AND user = ?", [t, user]
        return [Assignment(r["ref_key"], r["user"], r["expires_at"], r["created_at"])
                for r in self._conn.execute(sql + " ORDER BY ref_key", params)]

    # ------------------------------------------------------------------ audit, checks, backups
    @_locked
    def audit(self, sample_id: str | None = None, *, limit: int | None = None) -> list[AuditEntry]:
        """The audit log, oldest first (one sample's entries when `sample_id` is given)."""
        sql, params = "SELECT * FROM audit", []
        if sample_id is not None:
            sql, params = sql + " WHERE sample_id = ?", [sample_id]
        sql += " ORDER BY audit_id"
        if limit is not None:
            sql, params = sql + " LIMIT ?", [*params, int(limit)]
        return [AuditEntry(r["audit_id"], r["ts"], r["user"], r["action"], r["sample_id"], json.loads(r["diff"]))
                for r in self._conn.execute(sql, params)]

    @_locked
    def check(self, *, verify_blobs: bool = False) -> dict:
        """Consistency report: SQLite integrity, foreign keys, images rows refer to that are missing
        (or, with `verify_blobs`, whose pixels do not match their name), rows that break the store's
        rules (`rules.invalid_rows`, e.g. let in by an older import), unreferenced images, stray
        temporary files. `ok` is False when anything committed is damaged."""
        q = self._conn.execute
        integrity = [r[0] for r in q("PRAGMA integrity_check")]
        fk = [tuple(r) for r in q("PRAGMA foreign_key_check")]
        referenced = {r[0] for r in q(
            "SELECT source_image FROM samples WHERE source_image IS NOT NULL UNION "
            "SELECT edited_image FROM samples WHERE edited_image IS NOT NULL UNION SELECT image FROM candidates")}
        missing = sorted(h for h in referenced if not self.blobs.exists(h))
        corrupt = sorted(h for h in referenced - set(missing) if not self.blobs.verify(h)) if verify_blobs else []
        stored = set(self.blobs.all_hashes())
        temp = sum(1 for _ in self.blobs.tmp.iterdir()) if self.blobs.tmp.is_dir() else 0
        invalid = list(rules.invalid_rows(self))
        outside = [str(r) for r in background.background_rows(self)]
        ok = integrity == ["ok"] and not fk and not missing and not corrupt and not invalid and not outside
        return {"ok": ok, "integrity": integrity, "foreign_key_violations": len(fk), "missing_blobs": missing,
                "corrupt_blobs": corrupt, "unreferenced_blobs": len(stored - referenced), "temp_files": temp,
                "invalid_rows": invalid, "background_rows": outside}

    @_locked
    def background_rows(self) -> list[background.BackgroundRow]:
        """Samples whose edited image differs from the source outside M_e (`store/background.py`)."""
        return list(background.background_rows(self))

    @_locked
    def repair_background(self, user: str = "repair", *, dry_run: bool = False) -> list[background.BackgroundRow]:
        """Copy the source into every sample's edited image outside its M_e (the pixels inside M_e are
        kept), one audited change (`repair_background`) per sample; the samples found (with `dry_run`,
        only found). A sample changed by someone else in between is left for the next run."""
        found = list(background.background_rows(self))
        if dry_run:
            return found
        repaired = []
        for row in found:
            rec = self._record(self._row(row.sample_id))
            try:
                self._change(row.sample_id, {"edited_image": rec.sample.edited_image}, rec.version, user,
                             "repair_background")
            except ConflictError as exc:
                log.warning("%s not repaired: %s", row.sample_id, exc)
                continue
            repaired.append(row)
        return repaired

    def dump(self, path: Path | str) -> dict:
        """Write a full, restorable backup (JSON lines, images embedded; gzip when the name ends .gz)."""
        from refcoco_edit.store.dump import dump_store

        with self._lock:
            return dump_store(self, Path(path))

    def import_(self, path: Path | str, *, user: str = "import") -> dict:
        """Load a `dump` file: samples (with candidates, reviews, audit) whose id and key are new here,
        users and assignments not yet present. All or nothing. Counts of what was added and skipped."""
        from refcoco_edit.store.dump import import_dump

        with self._lock:
            return import_dump(self, Path(path), user)


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any exception; lock timeouts become StoreError."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"store is busy (another writer held the lock too long): {exc}") from None
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise StoreError(f"could not commit: {e}") from None
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


class _ReadTransaction:
    """A deferred transaction: several reads see one snapshot."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN")
        return self.conn

    def __exit__(self, *exc: Any) -> None:
        self.conn.execute("COMMIT")


def _readable(name: str, value: Any) -> Any:
    """A column value as the audit log shows it: JSON columns decoded, images as their hashes."""
    if value is not None and (name in JSON_FIELDS or name in MASK_FIELDS):
        return json.loads(value)
    return value


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password("no such user")
