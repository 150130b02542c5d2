"""Getting an item: the queue's next ref, a draft restored, one of My samples reopened, the source object picked."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from annotation_app.errors import AccessDenied, StateError
from annotation_app.handlers.annotate.state import AnnotateState, need_image, release_claims, require_user
from annotation_app.handlers.annotate.views import full_view
from annotation_app.handlers.common import fresh, status_label
from annotation_app.render import display_factor, object_at

log = logging.getLogger(__name__)

def _load_ref(ctx, user: str, ref_id: int, *, skipped: list[int], next_seed: int = 0) -> AnnotateState:
    ref = ctx.data.ref(ref_id)
    st = AnnotateState(ref_id=int(ref_id), image_id=int(ref["image_id"]), skipped=skipped, next_seed=next_seed)
    draft = ctx.queue.own_draft(ref_id, user)
    if draft is not None:
        _restore(ctx, st, draft.sample_id)
    else:
        st.ann_id, st.picked_ref = int(ref["ann_id"]), int(ref_id)
        st.region = np.array(ctx.ann_mask(st.ann_id))
    return st


def _restore(ctx, st: AnnotateState, sample_id: str) -> None:
    """Fill the session from a stored draft: object, prompt, candidates, the chosen one, M_e, region."""
    from refcoco_edit.store import rle
    from refcoco_edit.text.prompts import Prompt

    rec = ctx.reads.get_sample(sample_id, images=False)
    s = rec.sample
    st.sample_id, st.version = sample_id, rec.version
    st.ann_id, st.picked_ref = int(s.ann_id), int(s.ref_id)
    st.region = np.array(ctx.ann_mask(st.ann_id))
    if s.prompt and s.referring_spans and s.edit_spans:
        try:
            st.prompt = Prompt.from_spans(s.prompt, s.referring_spans, s.edit_spans, s.edit_type, s.target,
                                          source=s.generation.get("prompt_source", "template")).to_dict()
            st.sent_index = int(s.generation.get("sent_index", 0))
        except Exception as exc:  # noqa: BLE001 - a stored prompt that no longer validates is re-composed
            log.warning("draft %s: stored prompt not usable (%s)", sample_id, exc)
    cands = ctx.reads.get_candidates(sample_id, images=False)
    st.candidate_ids = [c.candidate_id for c in cands]
    chosen = [c for c in cands if c.chosen]
    if chosen:
        c = chosen[-1]
        st.chosen = c.candidate_id
        st.edit_mask = s.edit_mask if s.edit_mask is not None else c.edit_mask
        st.mask_corrected = bool(s.generation.get("edit_mask_corrected", False))
        if isinstance(c.params.get("region"), dict):
            st.region = rle.decode(c.params["region"])
        st.example_hash = c.params.get("example") or None
        st.example_source = c.params.get("example_source", "")
    if cands:
        st.next_seed = max(int(c.seed or 0) for c in cands) + 1


def next_item(ctx, username: str | None, state: AnnotateState | None) -> tuple[AnnotateState, dict]:
    """Leave the current item (its claim released; a draft stays the user's) and claim the next."""
    user = require_user(ctx, username).name
    old = fresh(state, AnnotateState)
    release_claims(ctx, old, user)
    skipped = list(old.skipped)
    if old.picked_ref is not None and old.picked_ref not in skipped:
        skipped.append(old.picked_ref)
    ref_id = ctx.queue.next_for(user, skip=skipped)
    if ref_id is None:
        st = AnnotateState(skipped=[])
        return st, full_view(ctx, st, user, "The queue is empty: every eligible ref is done or held by someone.")
    if ref_id in skipped:  # went round the whole queue: start a new round
        skipped = [ref_id]
    st = _load_ref(ctx, user, ref_id, skipped=skipped)
    msg = f"Ref {ref_id}: " + ("your draft, resumed." if st.sample_id
                               else "pick the object (or keep the suggested one).")
    return st, full_view(ctx, st, user, msg + _decided_note(ctx, user))


def _decided_note(ctx, user: str) -> str:
    """A reminder of the user's samples that reviewers rejected or sent back (see My samples):
    counted by status (a draft with a reviewer was sent back), without reading any review."""
    rejected = ctx.reads.count(status="rejected", annotator=user)
    sent_back = sum(1 for rec in ctx.reads.list_samples(status="draft", annotator=user, images=False)
                    if rec.sample.reviewer)
    said = [f"{n} {what}" for what, n in (("rejected", rejected), ("sent back", sent_back)) if n]
    return f" Your samples: {', '.join(said)}; reasons under My samples." if said else ""


def release_item(ctx, username: str | None, state: AnnotateState | None) -> tuple[AnnotateState, dict]:
    """Give the item on screen back to the queue (a draft stays the user's) and clear the screen."""
    user = require_user(ctx, username).name
    old = fresh(state, AnnotateState)
    release_claims(ctx, old, user)
    st = AnnotateState(skipped=old.skipped, outlines=old.outlines)
    msg = (f"Ref {old.picked_ref} given back to the queue." if old.picked_ref is not None
           else "Nothing was held.")
    return st, full_view(ctx, st, user, msg)


MY_SAMPLES_COLUMNS = ["sample", "ref", "status", "updated", "last review", "reviewer", "reason / comment"]
MY_SAMPLES_LIMIT = 200


def my_sample_rows(ctx, user: str) -> list[list[Any]]:
    """The user's samples, newest first, with the last review's decision and words."""
    from annotation_app.handlers.review import DECISION_LABELS

    recs = list(ctx.reads.list_samples(annotator=user, images=False))
    recs.sort(key=lambda r: str(r.sample.updated_at), reverse=True)
    rows = []
    for rec in recs[:MY_SAMPLES_LIMIT]:
        s = rec.sample
        reviews = ctx.reads.get_reviews(s.sample_id) if s.reviewer else []  # no reviewer: never reviewed
        last = reviews[-1] if reviews else None
        rows.append([s.sample_id, s.ref_id, status_label(s.status), s.updated_at,
                     DECISION_LABELS.get(last.decision, last.decision) if last else "",
                     last.reviewer if last else "", (last.comment or "") if last else ""])
    return rows


def my_samples(ctx, username: str | None) -> list[list[Any]]:
    """Rows of the My samples table: every sample the signed-in user made, newest first."""
    return my_sample_rows(ctx, require_user(ctx, username).name)


def reopen(ctx, username: str | None, state: AnnotateState | None, sample_id: Any) -> tuple[AnnotateState, dict]:
    """Open one of the user's drafts (one sent back, say) from My samples to work on it again."""
    user = require_user(ctx, username)
    old = fresh(state, AnnotateState)
    sample_id = str(sample_id or "").strip()
    if not sample_id:
        raise StateError("choose one of your samples in the table")
    rec = ctx.reads.get_sample(sample_id, images=False)  # NotFoundError when unknown
    s = rec.sample
    if s.annotator != user.name and user.role != "admin":
        raise AccessDenied(f"sample {sample_id} is {s.annotator}'s; only they (or an admin) may reopen it")
    if s.status != "draft":
        raise StateError(f"sample {sample_id} is {status_label(s.status)}; only drafts (saved, or sent back by a "
                         "reviewer) can be reopened")
    ref_id = int(s.ref_id)
    if ref_id not in {old.ref_id, old.picked_ref} and not ctx.queue.claim(ref_id, user.name):
        raise StateError(f"ref {ref_id} is being annotated by {ctx.queue.holder(ref_id) or 'someone else'}")
    for held in {old.ref_id, old.picked_ref} - {None, ref_id}:
        ctx.queue.release(held, user.name)
    st = AnnotateState(ref_id=ref_id, image_id=int(s.image_id), skipped=old.skipped, outlines=old.outlines)
    _restore(ctx, st, sample_id)
    return st, full_view(ctx, st, user.name, f"Reopened {sample_id} (ref {ref_id}).")


def pick_at(ctx, username: str | None, state: AnnotateState | None, x: int, y: int) -> tuple[AnnotateState, dict]:
    """A click on the shown picture at pixel (x, y): pick the object under it. The picture is the
    image enlarged by `display_factor`, so the click is scaled back to the image's pixels."""
    require_user(ctx, username)
    st = fresh(state, AnnotateState)
    need_image(st)
    try:
        f = display_factor(ctx.image(st.image_id).size)
        px, py = int(x) // f, int(y) // f
    except (TypeError, ValueError):
        raise StateError(f"not a position: ({x!r}, {y!r})") from None
    obj = object_at(ctx.objects(st.image_id), px, py)
    if obj is None:
        raise StateError(f"no object at ({px}, {py}): click inside an outlined object")
    return pick_object(ctx, username, st, obj.ann_id)


def pick_object(ctx, username: str | None, state: AnnotateState | None, ann_id: int) -> tuple[AnnotateState, dict]:
    """Make object `ann_id` of the current image the source: it must have a referring expression,
    be free (no one else's sample, no one else's claim) and the session must have no draft for
    another object."""
    user = require_user(ctx, username).name
    st = fresh(state, AnnotateState)
    need_image(st)
    try:
        ann_id = int(ann_id)
    except (TypeError, ValueError):
        raise StateError(f"not an object id: {ann_id!r}") from None
    obj = next((o for o in ctx.objects(st.image_id) if o.ann_id == ann_id), None)
    if obj is None:
        raise StateError(f"object {ann_id} is not in this image")
    if obj.ref_id is None:
        raise StateError(f"object {ann_id} has no referring expression, so it cannot be a source; "
                         "pick an object outlined in blue or yellow")
    if ann_id == st.ann_id:
        ctx.queue.claim(obj.ref_id, user)  # renew
        return st, full_view(ctx, st, user, f"Object {ann_id} (ref {obj.ref_id}) is the source.")
    if st.sample_id is not None:
        raise StateError(f"this item already has a draft ({st.sample_id}) for ref {st.picked_ref}; press Next "
                         "and come back to it, or keep its object")
    done = ctx.queue.done_for(obj.ref_id, user)
    if done is not None:
        raise StateError(f"ref {obj.ref_id} already has a sample ({status_label(done.status)}, "
                         f"by {done.annotator or 'a build'})")
    if not ctx.queue.claim(obj.ref_id, user):
        raise StateError(f"ref {obj.ref_id} is being annotated by {ctx.queue.holder(obj.ref_id) or 'someone else'}")
    if st.picked_ref not in (None, st.ref_id, obj.ref_id):
        ctx.queue.release(st.picked_ref, user)
    draft = ctx.queue.own_draft(obj.ref_id, user)
    new = AnnotateState(ref_id=st.ref_id, image_id=st.image_id, skipped=st.skipped, next_seed=st.next_seed)
    if draft is not None:
        _restore(ctx, new, draft.sample_id)
    else:
        new.ann_id, new.picked_ref = ann_id, obj.ref_id
        new.region = np.array(obj.mask)
    return new, full_view(ctx, new, user, f"Picked object {ann_id} (ref {obj.ref_id}).")
