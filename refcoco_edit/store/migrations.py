"""Schema versions of the store, as an ordered list of migration steps.

`MIGRATIONS[i]` turns a version-`i` database into version `i + 1` (version 0 is an empty file).
Opening a store runs the missing steps and records the new `schema_version` in the `meta` table, all
in one `BEGIN IMMEDIATE` transaction: SQLite's DDL is transactional, so a failing step leaves the
store exactly at its old version, and two processes opening an old store at once migrate it once.
A store whose version is above `len(MIGRATIONS)` was written by a newer refcoco-edit and is refused.

To change the schema: append a step; never edit a released one.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence

from refcoco_edit.store.errors import SchemaVersionError

log = logging.getLogger(__name__)

Migration = Callable[[sqlite3.Connection], None]


def _v1_base(conn: sqlite3.Connection) -> None:
    """Samples, their candidates and reviews, users, the audit log."""
    # One statement at a time: executescript() would COMMIT the migration half-way.
    for sql in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # Images are blob hashes, masks COCO RLE JSON, spans and generation JSON. `key` names the
        # builder's unit of work ("ref:12|edit:replace|pipeline:composition") for idempotent resumes.
        """CREATE TABLE samples (
            sample_id TEXT PRIMARY KEY,
            key TEXT UNIQUE,
            image_id INTEGER NOT NULL DEFAULT 0,
            ref_id INTEGER NOT NULL DEFAULT 0,
            ann_id INTEGER NOT NULL DEFAULT 0,
            split TEXT NOT NULL DEFAULT '',
            source_image TEXT,
            edited_image TEXT,
            source_mask TEXT,
            edit_mask TEXT,
            prompt TEXT NOT NULL DEFAULT '',
            referring_text TEXT NOT NULL DEFAULT '',
            edit_text TEXT NOT NULL DEFAULT '',
            referring_spans TEXT NOT NULL DEFAULT '[]',
            edit_spans TEXT NOT NULL DEFAULT '[]',
            edit_type TEXT NOT NULL DEFAULT '',
            target TEXT NOT NULL DEFAULT '',
            pipeline TEXT NOT NULL DEFAULT 'manual',
            generation TEXT NOT NULL DEFAULT '{}',
            annotator TEXT NOT NULL DEFAULT '',
            reviewer TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'draft',
            created_at TEXT NOT NULL DEFAULT '',
            updated_at TEXT NOT NULL DEFAULT '',
            version INTEGER NOT NULL DEFAULT 1
        )""",
        """CREATE TABLE candidates (
            candidate_id INTEGER PRIMARY KEY AUTOINCREMENT,
            sample_id TEXT NOT NULL REFERENCES samples(sample_id) ON DELETE CASCADE,
            image TEXT NOT NULL,
            edit_mask TEXT,
            seed INTEGER,
            params TEXT NOT NULL DEFAULT '{}',
            model TEXT NOT NULL DEFAULT '',
            score REAL,
            chosen INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX candidates_sample ON candidates(sample_id)",
        """CREATE TABLE reviews (
            review_id INTEGER PRIMARY KEY AUTOINCREMENT,
            sample_id TEXT NOT NULL REFERENCES samples(sample_id) ON DELETE CASCADE,
            reviewer TEXT NOT NULL,
            decision TEXT NOT NULL,
            comment TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX reviews_sample ON reviews(sample_id)",
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT,
            created_at TEXT NOT NULL DEFAULT ''
        )""",
        """CREATE TABLE audit (
            audit_id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            user TEXT NOT NULL,
            action TEXT NOT NULL,
            sample_id TEXT,
            diff TEXT NOT NULL DEFAULT '{}'
        )""",
    ):
        conn.execute(sql)


def _v2_failures_assignments(conn: sqlite3.Connection) -> None:
    """Build failures (`samples.error`), the app's work queue, and indexes for listing and audit."""
    for sql in (
        "ALTER TABLE samples ADD COLUMN error TEXT",
        """CREATE TABLE assignments (
            ref_key TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            expires_at REAL NOT NULL,
            created_at TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX assignments_user ON assignments(user)",
        "CREATE INDEX samples_filter ON samples(status, split, edit_type)",
        "CREATE INDEX audit_sample ON audit(sample_id)",
    ):
        conn.execute(sql)


def _v3_user_sessions(conn: sqlite3.Connection) -> None:
    """Accounts that can be disabled, and a time before which their sign-in sessions are void
    (set when the password changes or the account is disabled)."""
    for sql in (
        "ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE users ADD COLUMN sessions_valid_from REAL NOT NULL DEFAULT 0",
    ):
        conn.execute(sql)


MIGRATIONS: tuple[Migration, ...] = (_v1_base, _v2_failures_assignments, _v3_user_sessions)
LATEST = len(MIGRATIONS)


def read_version(conn: sqlite3.Connection) -> int:
    """The store's schema version; 0 for an empty database."""
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection, *, upto: int | None = None,
            migrations: Sequence[Migration] = MIGRATIONS, where: str = "store") -> tuple[int, int]:
    """Bring `conn`'s database to version `upto` (default: the latest); returns (old, new) versions.

    `conn` must be in autocommit mode (isolation_level=None) so that this function owns the transaction.
    """
    target = len(migrations) if upto is None else upto
    current = read_version(conn)
    if current > len(migrations):
        raise SchemaVersionError(
            f"{where} has schema version {current}, newer than this refcoco-edit understands "
            f"(up to {len(migrations)}); upgrade refcoco-edit to open it")
    if current >= target:
        return current, current
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = read_version(conn)  # another process may have migrated while we waited for the lock
        start = current
        for step in range(current, target):
            log.info("migrating %s from schema version %d to %d", where, step, step + 1)
            migrations[step](conn)
        if target > start:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(target),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return start, max(start, target)
