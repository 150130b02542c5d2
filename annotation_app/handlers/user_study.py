"""The user-study page's actions: show the next item to rate, record the ratings, export the means.

The page has a fixed number of output slots (`MAX_METHODS`); the session remembers which method
each shown slot holds, so the browser only ever sends slot scores, never method names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from annotation_app.auth import ADMIN, RATE, require_role
from annotation_app.errors import StateError
from annotation_app.handlers.common import fresh
from annotation_app.render import highlight
from annotation_app.user_study import MAX_METHODS, MethodSummary

SUMMARY_COLUMNS = list(MethodSummary.__dataclass_fields__)


@dataclass
class StudyState:
    item_id: str | None = None
    methods: list[str] = field(default_factory=list)  # slot i shows methods[i]


def _empty(message: str, done: int, total: int) -> dict[str, Any]:
    return {"source": None, "prompt": None, "outputs": [None] * MAX_METHODS, "slots": 0,
            "progress": f"{done} of {total} item(s) rated.", "message": message}


def study_next(ctx, username: str | None, state: StudyState | None) -> tuple[StudyState, dict]:
    user = require_role(ctx.reads, username, RATE, "rate outputs")
    study = ctx.study
    done, total = study.counts(user.name)
    item_id = study.next_item_id(user.name)
    if item_id is None:
        msg = "No study items yet." if total == 0 else "You have rated every item. Thank you!"
        return StudyState(), _empty(msg, done, total)
    item = study.item(item_id, user.name)
    outputs = [o.image for o in item.outputs] + [None] * (MAX_METHODS - len(item.outputs))
    prompt = (highlight(item.prompt, item.referring_spans, item.edit_spans)
              if item.referring_spans or item.edit_spans else [(item.prompt, None)])
    return StudyState(item_id, [o.method for o in item.outputs]), {
        "source": item.source, "prompt": prompt, "outputs": outputs, "slots": len(item.outputs),
        "progress": f"{done} of {total} item(s) rated.",
        "message": "Rate each output 1 (bad) to 5 (excellent) for quality and for consistency."}


def study_rate(ctx, username: str | None, state: StudyState | None, scores: list[tuple[Any, Any]]
               ) -> tuple[StudyState, dict]:
    """`scores[i]` = (quality, consistency) of slot i; every shown slot must be scored."""
    user = require_role(ctx.reads, username, RATE, "rate outputs")
    st = fresh(state, StudyState)
    if not st.item_id:
        raise StateError("no item on screen: press Next")
    scores = list(scores)[: len(st.methods)]
    if len(scores) < len(st.methods) or any(q in (None, "") or c in (None, "") for q, c in scores):
        raise StateError("score every output for quality and consistency before submitting")
    ctx.study.rate(user.name, st.item_id, {m: pair for m, pair in zip(st.methods, scores)})
    new, view = study_next(ctx, username, None)
    view["message"] = f"Saved your ratings of item {st.item_id}. " + view["message"]
    return new, view


def study_export(ctx, username: str | None) -> dict[str, Any]:
    """Means per method with 95% intervals (admins only): table rows and CSV text."""
    require_role(ctx.reads, username, ADMIN, "export the user study")
    rows = [asdict(s) for s in ctx.study.summary()]
    table = [[(round(r[c], 3) if isinstance(r[c], float) else r[c]) for c in SUMMARY_COLUMNS] for r in rows]
    return {"columns": SUMMARY_COLUMNS, "rows": table, "csv": ctx.study.export_csv()}
