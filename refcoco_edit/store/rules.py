"""What a stored row must satisfy: the rules the store applies to its own writes, stated over rows.

The store's write methods check their arguments as they go; rows can also arrive another way: a
dump imported from elsewhere, or an old store edited by hand. `row_problems` checks such rows
against the same rules (the enums, account names, integer ids and versions, review decisions, masks
that decode and match their image, and `schema.validate` for candidate and accepted samples), so
`store import` refuses a dump that breaks them and `store check` finds what an earlier import let in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from refcoco_edit.errors import RefcocoEditError
from refcoco_edit.schema import EDIT_TYPES, MASK_FIELDS, PIPELINES, STATUSES, validate

if TYPE_CHECKING:
    import sqlite3

    from refcoco_edit.schema import Sample
    from refcoco_edit.store.blobs import BlobStore


class Store(Protocol):
    """What the rules read of a store (its connection, blobs and row decoding); `db.Store` has it."""

    blobs: BlobStore
    _conn: sqlite3.Connection

    def _sample_from_row(self, row: Any) -> Sample: ...

# table -> the column that names a row in messages
NAMES: dict[str, str] = {"users": "name", "samples": "sample_id", "candidates": "candidate_id",
                         "reviews": "review_id", "assignments": "ref_key"}
KINDS: dict[str, str] = {"users": "user", "samples": "sample", "candidates": "candidate", "reviews": "review",
                         "assignments": "assignment"}
VALIDATED_STATUSES = ("candidate", "accepted")


def enum_problems(values: dict[str, Any]) -> list[str]:
    """Status, edit type and pipeline outside their sets (only the keys present are checked)."""
    problems = []
    if "status" in values and values["status"] not in STATUSES:
        problems.append(f"status {values['status']!r} is not one of {', '.join(STATUSES)}")
    if values.get("edit_type") not in (None, "", *EDIT_TYPES):
        problems.append(f"edit_type {values['edit_type']!r} is not one of {', '.join(EDIT_TYPES)}")
    if "pipeline" in values and values["pipeline"] not in PIPELINES:
        problems.append(f"pipeline {values['pipeline']!r} is not one of {', '.join(PIPELINES)}")
    return problems


ROLES: tuple[str, ...] = ("annotator", "reviewer", "admin")
# review decision -> the sample status it leads to
DECISIONS: dict[str, str] = {"accept": "accepted", "reject": "rejected", "send_back": "draft"}
MAX_USER_NAME = 64


def user_name_problem(name: Any) -> str | None:
    """Why `name` cannot be an account name (None when it can): a non-empty string of at most
    MAX_USER_NAME printable characters without surrounding spaces."""
    if not isinstance(name, str) or not name or name != name.strip():
        return f"bad user name {name!r}"
    if len(name) > MAX_USER_NAME:
        return f"user name of {len(name)} characters (at most {MAX_USER_NAME})"
    if not name.isprintable():
        return f"user name {name!r} has unprintable characters"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _name_problem(value: Any, what: str, *, empty_ok: bool) -> str | None:
    if empty_ok and value == "":
        return None
    problem = user_name_problem(value)
    return f"{what}: {problem}" if problem else None


def _json_problem(row: Any, name: str, kind: type) -> str | None:
    try:
        value = json.loads(row[name])
    except (TypeError, ValueError):
        return f"{name} is not JSON"
    return None if isinstance(value, kind) else f"{name} is not a {kind.__name__}"


def _mask(text: Any, name: str, problems: list[str]) -> Any:
    from refcoco_edit.store import rle

    if text is None:
        return None
    try:
        return rle.from_json(text)
    except (RefcocoEditError, TypeError, ValueError) as exc:
        problems.append(f"{name} does not decode: {exc}")
        return None


def user_problems(store: Store, row: Any) -> list[str]:
    problems = [p for p in [_name_problem(row["name"], "name", empty_ok=False)] if p]
    if row["role"] not in ROLES:
        problems.append(f"role {row['role']!r} is not one of {', '.join(ROLES)}")
    pw = row["password_hash"]
    if pw is not None and (not isinstance(pw, str) or pw.count("$") != 5 or not pw.startswith("scrypt$")):
        problems.append("password_hash is not a scrypt hash")
    if row["disabled"] not in (0, 1) or not _is_int(row["disabled"]):
        problems.append(f"disabled is {row['disabled']!r}, not 0 or 1")
    return problems


def sample_problems(store: Store, row: Any) -> list[str]:
    from refcoco_edit.imaging.files import open_image

    problems = enum_problems({k: row[k] for k in ("status", "edit_type", "pipeline")})
    if not isinstance(row["sample_id"], str) or not row["sample_id"]:
        problems.append(f"sample_id {row['sample_id']!r} is not a non-empty string")
    if not _is_int(row["version"]) or row["version"] < 1:
        problems.append(f"version {row['version']!r} is not a positive integer")
    problems += [f"{k} {row[k]!r} is not an integer" for k in ("image_id", "ref_id", "ann_id") if not _is_int(row[k])]
    problems += [p for p in (_name_problem(row[k], k, empty_ok=True) for k in ("annotator", "reviewer")) if p]
    problems += [p for p in (_json_problem(row, "referring_spans", list), _json_problem(row, "edit_spans", list),
                             _json_problem(row, "generation", dict)) if p]
    masks = {name: _mask(row[name], name, problems) for name in MASK_FIELDS}
    if row["source_image"] and store.blobs.exists(row["source_image"]):
        try:
            w, h = open_image(store.blobs.read_bytes(row["source_image"]), what="source_image", load=False).size
        except RefcocoEditError as exc:
            problems.append(str(exc))
        else:
            problems += [f"{name} is {m.shape[1]}x{m.shape[0]}, the source image {w}x{h}"
                         for name, m in masks.items() if m is not None and m.shape != (h, w)]
    if not problems and row["status"] in VALIDATED_STATUSES and row["error"] is None:
        try:
            problems += [f"cannot be {row['status']}: {p}" for p in validate(store._sample_from_row(row))]
        except RefcocoEditError as exc:
            problems.append(str(exc))
    return problems


def candidate_problems(store: Store, row: Any) -> list[str]:
    problems: list[str] = []
    _mask(row["edit_mask"], "edit_mask", problems)
    if row["chosen"] not in (0, 1) or not _is_int(row["chosen"]):
        problems.append(f"chosen is {row['chosen']!r}, not 0 or 1")
    if row["seed"] is not None and not _is_int(row["seed"]):
        problems.append(f"seed {row['seed']!r} is not an integer")
    problems += [p for p in [_json_problem(row, "params", dict)] if p]
    return problems


def review_problems(store: Store, row: Any) -> list[str]:
    problems = [p for p in [_name_problem(row["reviewer"], "reviewer", empty_ok=False)] if p]
    if row["decision"] not in DECISIONS:
        problems.append(f"decision {row['decision']!r} is not one of {', '.join(DECISIONS)}")
    return problems


def assignment_problems(store: Store, row: Any) -> list[str]:
    problems = [p for p in [_name_problem(row["user"], "user", empty_ok=False)] if p]
    if not isinstance(row["expires_at"], (int, float)) or isinstance(row["expires_at"], bool):
        problems.append(f"expires_at {row['expires_at']!r} is not a number")
    return problems


RULES: dict[str, Callable[[Store, Any], list[str]]] = {
    "users": user_problems, "samples": sample_problems, "candidates": candidate_problems,
    "reviews": review_problems, "assignments": assignment_problems}


def invalid_rows(store: Store, only: dict[str, set] | None = None) -> Iterator[str]:
    """"<kind> <id>: problem; problem" for every row that breaks the rules (of the tables and
    row names in `only`, when given), in table order."""
    for table, check in RULES.items():
        key = NAMES[table]
        wanted = None if only is None else only.get(table, set())
        if wanted is not None and not wanted:
            continue
        for row in store._conn.execute(f"SELECT * FROM {table} ORDER BY {key}"):
            if wanted is not None and row[key] not in wanted:
                continue
            problems = check(store, row)
            if problems:
                yield f"{KINDS[table]} {row[key]}: " + "; ".join(problems)
