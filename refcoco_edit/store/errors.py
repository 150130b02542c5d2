"""Errors of the annotation store; all are `RefcocoEditError`s, so the CLIs print them as one line."""

from __future__ import annotations

from refcoco_edit.errors import DataError, RefcocoEditError


class StoreError(RefcocoEditError):
    """The store cannot do what was asked (missing, unreadable, or in an unexpected state)."""


class SchemaVersionError(StoreError):
    """The store was written by a newer refcoco-edit than this one."""


class NotFoundError(StoreError):
    """No sample (or candidate, user) with that id."""


class ConflictError(StoreError):
    """Someone else changed the sample since the caller read it; reload and redo the change."""

    def __init__(self, sample_id: str, expected_version: int, actual_version: int) -> None:
        self.sample_id = sample_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"sample {sample_id} was changed by someone else: you edited version {expected_version}, "
            f"the store now has version {actual_version}; reload it and redo your change"
        )


class DuplicateKeyError(StoreError):
    """A sample with that work key (or sample id) is already stored."""

    def __init__(self, what: str, value: str, sample_id: str) -> None:
        self.what = what
        self.value = value
        self.sample_id = sample_id
        super().__init__(f"{what} {value!r} is already stored (sample {sample_id})")


class DumpError(DataError):
    """A dump file is truncated, malformed or from a newer store."""
