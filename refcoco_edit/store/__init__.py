"""The annotation store: samples, candidates, reviews, users, assignments and an audit log in SQLite
(WAL), images in a content-addressed folder beside it. See `db.py` for the design.

    from refcoco_edit.store import Store
    with Store.open("work/refcoco-edit.sqlite") as store:
        sid = store.add_sample(sample, user="build", key="ref:12|edit:replace|pipeline:composition")
        rec = store.get_sample(sid)
        store.update_sample(sid, {"prompt": "..."}, expected_version=rec.version, user="ann1")
"""

from refcoco_edit.store.blobs import BlobStore, pixel_hash
from refcoco_edit.store.db import (
    DECISIONS,
    ROLES,
    Assignment,
    AuditEntry,
    Candidate,
    Failure,
    Record,
    Review,
    Store,
    User,
    key_sample_id,
)
from refcoco_edit.store.errors import (
    ConflictError,
    DumpError,
    DuplicateKeyError,
    NotFoundError,
    SchemaVersionError,
    StoreError,
)
from refcoco_edit.store.migrations import LATEST as SCHEMA_VERSION

__all__ = [
    "Assignment", "AuditEntry", "BlobStore", "Candidate", "ConflictError", "DECISIONS", "DumpError",
    "DuplicateKeyError", "Failure", "NotFoundError", "ROLES", "Record", "Review", "SCHEMA_VERSION",
    "SchemaVersionError", "Store", "StoreError", "User", "key_sample_id", "pixel_hash",
]
