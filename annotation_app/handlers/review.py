"""The reviewer's actions: take the next submitted sample, look at it side by side, accept, reject
with a reason, or send it back with a comment.

Only reviewers and admins may review (the role comes from the store, not from the page); nobody
but an admin reviews a sample they made; a sample is claimed while on a reviewer's screen (key
`review:<sample id>`), so two reviewers do not get the same one; the decision passes the version the
reviewer looked at, so a sample changed meanwhile is refused (`ConflictError`) instead of being
judged unseen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from annotation_app.auth import REVIEW, require_role
from annotation_app.errors import AccessDenied, StateError
from annotation_app.handlers.common import fresh, status_label
from annotation_app.queue import SampleInfo
from annotation_app.render import EDIT_MASK_COLOUR, PICKED_COLOUR, highlight, mask_image, outlined

DECISION_LABELS = {"accept": "accepted", "reject": "rejected", "send_back": "sent back"}
TABLE_COLUMNS = ["sample", "ref", "annotator", "status", "reviewer", "edit type", "pipeline", "updated"]
TABLE_LIMIT = 500
PAGE = 32  # submitted samples read per look-up while searching for one to review


@dataclass
class ReviewState:
    sample_id: str | None = None
    version: int | None = None
    claimed: str | None = None  # assignment key held while the sample is on screen


def review_key(sample_id: str) -> str:
    return f"review:{sample_id}"


def _reviewer(ctx, username: str | None):
    return require_role(ctx.reads, username, REVIEW, "review samples")


def _release(ctx, st: ReviewState, user: str) -> None:
    if st.claimed:
        ctx.store.release(st.claimed, user)


def sample_view(ctx, sample_id: str, message: str = "", *, pictures: bool = True) -> dict[str, Any]:
    """Everything a reviewer looks at: source with M, result with M_e, both masks, the prompt with
    its parts, and who made and reviewed what (`pictures=False`: only the texts)."""
    rec = ctx.reads.get_sample(sample_id, images=pictures)
    s = rec.sample
    gen = s.generation or {}
    reviews = ctx.reads.get_reviews(sample_id)
    history = "\n".join(f"- {r.created_at}: **{r.reviewer}** {DECISION_LABELS.get(r.decision, r.decision)}"
                        + (f": _{r.comment}_" if r.comment else "") for r in reviews) or "- no reviews yet"
    info = (f"**Sample** `{sample_id}` · version {rec.version} · **{status_label(s.status)}**  \n"
            f"Ref {s.ref_id} · image {s.image_id} · object {s.ann_id} · split {s.split}  \n"
            f"Made by **{s.annotator or '?'}** · edit type {s.edit_type or '?'} · target {s.target or '-'}  \n"
            f"Pipeline {s.pipeline} · model {gen.get('model', '?')} · seed {gen.get('seed', '?')} · "
            f"steps {gen.get('steps', gen.get('num_inference_steps', '-'))}"
            + (" · M_e corrected by hand" if gen.get("edit_mask_corrected") else "")
            + f"  \nCreated {s.created_at} · updated {s.updated_at}\n\nReviews:\n{history}")
    if not pictures:
        return {"info": info, "message": message}
    return {
        "source": outlined(s.source_image, s.source_mask, PICKED_COLOUR) if s.source_image is not None else None,
        "result": outlined(s.edited_image, s.edit_mask, EDIT_MASK_COLOUR) if s.edited_image is not None else None,
        "source_mask": mask_image(s.source_mask),
        "edit_mask": mask_image(s.edit_mask),
        "prompt": highlight(s.prompt, s.referring_spans, s.edit_spans) if s.prompt else None,
        "info": info,
        "message": message,
    }


def _empty_view(message: str) -> dict[str, Any]:
    return {"source": None, "result": None, "source_mask": None, "edit_mask": None, "prompt": None,
            "info": "No sample on screen.", "message": message}


def next_review(ctx, username: str | None, state: ReviewState | None) -> tuple[ReviewState, dict]:
    """Claim the oldest submitted sample made by someone else.

    The sample on screen is passed over only while the reviewer holds it undecided (Next then means
    "skip it"), and even then it comes back when nothing else waits; once decided (sent back, say),
    its resubmission is an item like any other, found although it is still on screen."""
    user = _reviewer(ctx, username)
    st = fresh(state, ReviewState)
    _release(ctx, st, user.name)
    skip = st.sample_id if st.claimed else None
    held = {a.ref_key for a in ctx.reads.assignments() if a.user != user.name}
    found = _claim_next(ctx, user, held, skip)
    if found is None and skip is not None:
        found = _claim_next(ctx, user, held, None)
    if found is None:
        return ReviewState(), _empty_view("Nothing to review: no submitted samples by others are waiting.")
    new, annotator = found
    return new, sample_view(ctx, new.sample_id, f"Reviewing {new.sample_id} by {annotator}.")


def _claim_next(ctx, user, held: set[str], skip: str | None) -> tuple[ReviewState, str] | None:
    """Claim the oldest waiting sample that `user` may review, other than `skip`."""
    offset = 0
    while True:
        page = list(ctx.reads.list_samples(status="candidate", images=False, limit=PAGE, offset=offset))
        for rec in page:
            s = rec.sample
            if s.sample_id == skip or review_key(s.sample_id) in held:
                continue
            if s.annotator == user.name and user.role != "admin":
                continue
            if not ctx.store.assign(review_key(s.sample_id), user.name, ctx.config.assignment_ttl_s):
                continue
            # another reviewer may have decided on it between the listing and the claim
            now = ctx.reads.get_sample(s.sample_id, images=False)
            if now.sample.status != "candidate":
                ctx.store.release(review_key(s.sample_id), user.name)
                continue
            return ReviewState(s.sample_id, now.version, review_key(s.sample_id)), s.annotator
        if len(page) < PAGE:
            return None
        offset += len(page)


def load_review(ctx, username: str | None, state: ReviewState | None, sample_id: str) -> tuple[ReviewState, dict]:
    """Open any sample (e.g. from the table) to look at it; a submitted one is also claimed for review."""
    user = _reviewer(ctx, username)
    st = fresh(state, ReviewState)
    sample_id = str(sample_id or "").strip()
    if not sample_id:
        raise StateError("choose a sample")
    rec = ctx.reads.get_sample(sample_id, images=False)  # NotFoundError when unknown
    _release(ctx, st, user.name)
    claimed = None
    may_decide = rec.sample.annotator != user.name or user.role == "admin"
    if rec.sample.status == "candidate" and may_decide and ctx.store.assign(review_key(sample_id), user.name,
                                                                            ctx.config.assignment_ttl_s):
        claimed = review_key(sample_id)
    return ReviewState(sample_id, rec.version, claimed), sample_view(ctx, sample_id)


def decide(ctx, username: str | None, state: ReviewState | None, decision: str, comment: str = ""
           ) -> tuple[ReviewState, dict]:
    """accept | reject (a reason is required) | send_back (a comment is required)."""
    user = _reviewer(ctx, username)
    st = fresh(state, ReviewState)
    if decision not in DECISION_LABELS:
        raise StateError(f"unknown decision {decision!r}")
    if not st.sample_id:
        raise StateError("no sample on screen: press Next")
    comment = (comment or "").strip()
    if decision == "reject" and not comment:
        raise StateError("give a reason for the rejection")
    if decision == "send_back" and not comment:
        raise StateError("say what the annotator should change")
    rec = ctx.reads.get_sample(st.sample_id, images=False)
    s = rec.sample
    if s.status != "candidate":
        raise StateError(f"sample {st.sample_id} is {status_label(s.status)}, not waiting for review")
    if s.annotator == user.name and user.role != "admin":
        raise AccessDenied(f"{user.name} made sample {st.sample_id}; another reviewer must review it")
    if st.claimed is None:
        holder = next((a.user for a in ctx.reads.assignments() if a.ref_key == review_key(st.sample_id)), None)
        if holder not in (None, user.name):
            raise StateError(f"sample {st.sample_id} is being reviewed by {holder}")
    version = ctx.store.add_review(st.sample_id, user.name, decision, expected_version=st.version, comment=comment)
    ctx.queue.note(SampleInfo(st.sample_id, int(s.ref_id), {"accept": "accepted", "reject": "rejected",
                                                             "send_back": "draft"}[decision], s.annotator))
    _release(ctx, st, user.name)
    new = ReviewState(st.sample_id, version, None)
    # the pictures stay as they are on the page; only the text changes
    view = sample_view(ctx, st.sample_id, f"Sample {st.sample_id} {DECISION_LABELS[decision]}. Press Next.",
                       pictures=False)
    return new, view


def accept(ctx, username, state):
    return decide(ctx, username, state, "accept")


def reject(ctx, username, state, reason: str):
    return decide(ctx, username, state, "reject", reason)


def send_back(ctx, username, state, comment: str):
    return decide(ctx, username, state, "send_back", comment)


def sample_table(ctx, username: str | None, status: str | None = None, annotator: str | None = None
                 ) -> list[list[Any]]:
    """Rows of the "who made what" table (newest last), for reviewers and admins."""
    _reviewer(ctx, username)
    rows = []
    for rec in ctx.reads.list_samples(status=status or None, annotator=annotator or None, images=False):
        s = rec.sample
        rows.append([s.sample_id, s.ref_id, s.annotator, status_label(s.status), s.reviewer, s.edit_type, s.pipeline,
                     s.updated_at])
    return rows[-TABLE_LIMIT:]
