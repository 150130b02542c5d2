"""Small pieces the handlers share."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, TypeVar

S = TypeVar("S")


@dataclass
class Choices:
    """New choices for a dropdown or radio: (label, value) pairs and the selected value."""

    choices: list[tuple[str, Any]] = field(default_factory=list)
    value: Any = None


def fresh(state: S | None, cls: type[S]) -> S:
    """A private copy of the session state (a new one when there is none), so a handler that
    refuses half-way leaves the session as it was."""
    if state is None or not isinstance(state, cls):
        return cls()
    return copy.deepcopy(state)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "_none_"
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


# What people read for each stored status: the store calls a submitted sample a "candidate", a word
# the app already uses for the generated pictures.
STATUS_LABELS = {"draft": "draft", "candidate": "submitted", "accepted": "accepted", "rejected": "rejected"}


def status_label(status: str | None) -> str:
    return STATUS_LABELS.get(status or "", status or "?")
