"""How values go into the database's text columns: compact JSON and UTC timestamps.

Shared by the store and its dump format, so a dumped row and a stored row are byte-for-byte the same.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from refcoco_edit.errors import InputError
from refcoco_edit.io import json_default


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(obj: Any) -> str:
    """Compact JSON for a column; a value JSON cannot hold is an InputError naming why."""
    try:
        return json.dumps(obj, default=json_default, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InputError(f"value cannot be stored as JSON: {exc}") from None
