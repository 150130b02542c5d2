"""The user-study page's actions: show the next item to rate, record the ratings, export the means.

The page has a fixed number of output slots (`MAX_METHODS`); the session remembers which method
each shown slot holds, so the browser only ever sends slot scores, never method names. The export
goes back in the admin's own response (table rows and CSV text), never to a file: files the app
hands to the page land in Gradio's cache, which its file route serves to every signed-in user.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from annotation_app.auth import ADMIN, RATE, require_role
from annotation_app.errors import StateError
from annotation_app.handlers.common import fresh
from annotation_app.render import highlight
from annotation_app.user_study import MAX_METHODS, QUESTION_KEYS, MethodSummary

SUMMARY_COLUMNS = list(MethodSummary.__dataclass_fields__)


@dataclass
class StudyState:
    item_id: str | None = None
    methods: list[str] = field(default_factory=list)  # slot i shows methods[i]
    questions: list[str] | None = None  # the questions the page asks (None: as it was built)


def _empty(message: str, done: int, total: int) -> dict[str, Any]:
    return {"source": None, "prompt": None, "outputs": [None] * MAX_METHODS, "slots": 0,
            "progress": f"{done} of {total} item(s) rated.", "message": message}


def _asked_words(ctx) -> str:
    labels = [q.label.lower() for q in ctx.study.questions()]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def study_next(ctx, username: str | None, state: StudyState | None) -> tuple[StudyState, dict]:
    user = require_role(ctx.reads, username, RATE, "rate outputs")
    study = ctx.study
    done, total = study.counts(user.name)
    item_id = study.next_item_id(user.name)
    asked = [q.key for q in study.questions()]
    if item_id is None:
        msg = "No study items yet." if total == 0 else "You have rated every item. Thank you!"
        return StudyState(questions=asked), {**_empty(msg, done, total), "questions": asked}
    item = study.item(item_id, user.name)
    outputs = [o.image for o in item.outputs] + [None] * (MAX_METHODS - len(item.outputs))
    prompt = (highlight(item.prompt, item.referring_spans, item.edit_spans)
              if item.referring_spans or item.edit_spans else [(item.prompt, None)])
    return StudyState(item_id, [o.method for o in item.outputs], asked), {
        "source": item.source, "prompt": prompt, "outputs": outputs, "slots": len(item.outputs), "questions": asked,
        "progress": f"{done} of {total} item(s) rated.",
        "message": f"Rate each output 1 (bad) to 5 (excellent) for {_asked_words(ctx)}."}


def study_rate(ctx, username: str | None, state: StudyState | None, scores: Sequence[Sequence[Any]]
               ) -> tuple[StudyState, dict]:
    """`scores[i]` = slot i's scores in `QUESTION_KEYS` order (quality, prompt consistency,
    preservation; a shorter tuple leaves the last out). Every shown slot must be scored on every
    question the study asks; scores of questions it does not ask are ignored (the page hides them)."""
    user = require_role(ctx.reads, username, RATE, "rate outputs")
    st = fresh(state, StudyState)
    if not st.item_id:
        raise StateError("no item on screen: press Next")
    asked = [q.key for q in ctx.study.questions()]
    if st.questions is not None and st.questions != asked:
        raise StateError("the study's questions have changed since this item was shown: press Next")
    scores = list(scores)[: len(st.methods)]
    answers = [{k: v for k, v in zip(QUESTION_KEYS, slot) if k in asked} for slot in scores]
    if len(answers) < len(st.methods) or any(a.get(k) in (None, "") for a in answers for k in asked):
        raise StateError(f"score every output for {_asked_words(ctx)} before submitting")
    ctx.study.rate(user.name, st.item_id, dict(zip(st.methods, answers)))
    new, view = study_next(ctx, username, None)
    view["message"] = f"Saved your ratings of item {st.item_id}. " + view["message"]
    return new, view


def _cell(v: Any) -> Any:
    """A table cell: floats to 3 places, an empty cell for a question without scores."""
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 3)
    return v


def study_export(ctx, username: str | None) -> dict[str, Any]:
    """Means per method and question with 95% intervals (admins only): table rows and CSV text."""
    require_role(ctx.reads, username, ADMIN, "export the user study")
    rows = [asdict(s) for s in ctx.study.summary()]
    table = [[_cell(r[c]) for c in SUMMARY_COLUMNS] for r in rows]
    return {"columns": SUMMARY_COLUMNS, "rows": table, "csv": ctx.study.export_csv()}
