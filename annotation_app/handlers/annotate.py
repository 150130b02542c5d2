"""The annotator's actions: get an item, pick the source object, compose the prompt, generate and
pick a reference edit, correct M_e, save or submit.

A sample is written to the store only when there is something to keep: the first generation or
the first save creates it as a draft under the annotator's name (work key `app|ref:<id>`, so a ref
gets one sample whoever makes it); every later write passes the version the session last read, so
a concurrent change (a reviewer sending it back, the same user in another tab) is refused with
`ConflictError` instead of being overwritten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotation_app.auth import ANNOTATE, require_role
from annotation_app.errors import AccessDenied, StateError
from annotation_app.handlers.common import Choices, fresh, status_label
from annotation_app.queue import SampleInfo, sample_key
from annotation_app.render import (
    EDIT_MASK_COLOUR,
    REGION_COLOUR,
    STROKE_MODES,
    apply_strokes,
    box_mask,
    display_factor,
    editor_value,
    enlarge,
    highlight,
    mask_from_editor,
    object_at,
    outline_objects,
    outlined,
)

log = logging.getLogger(__name__)

Progress = Callable[..., Any] | None
REGION_KINDS = ("object", "box", "grow")
GROW_PX = 8
MAX_STEPS = 500


@dataclass
class AnnotateState:
    """One annotator's session: the item on screen and the work on it (no images: those are re-read)."""

    ref_id: int | None = None  # the ref the queue suggested
    image_id: int | None = None
    ann_id: int | None = None  # the object picked as the source
    picked_ref: int | None = None  # its ref
    sample_id: str | None = None
    version: int | None = None
    prompt: dict | None = None  # Prompt.to_dict()
    sent_index: int = 0
    prompt_seed: int = 0
    rephrasings: list[dict] = field(default_factory=list)
    region: np.ndarray | None = None  # what generation edits; the object's mask by default
    example_hash: str | None = None
    example_source: str = ""
    candidate_ids: list[int] = field(default_factory=list)
    chosen: int | None = None
    edit_mask: np.ndarray | None = None
    mask_corrected: bool = False
    next_seed: int = 0
    skipped: list[int] = field(default_factory=list)
    outlines: bool = True  # draw the objects' outlines on the picture (off: the image as it is)


def _user(ctx, username: str | None):
    return require_role(ctx.reads, username, ANNOTATE, "annotate")


def _need_image(st: AnnotateState) -> None:
    if st.image_id is None:
        raise StateError("press Next to get an image first")


def _need_pick(st: AnnotateState) -> None:
    _need_image(st)
    if st.ann_id is None or st.picked_ref is None:
        raise StateError("pick the source object first: click it in the image")


# ---------------------------------------------------------------------------------- views


def _item_markdown(ctx, st: AnnotateState, user: str) -> str:
    if st.image_id is None:
        return "No item. Press **Next** to get one from the queue."
    ref = ctx.data.ref(st.picked_ref if st.picked_ref is not None else st.ref_id)
    parts = [f"**Ref {ref['ref_id']}** · image {st.image_id} · object {st.ann_id}"
             + ("" if st.picked_ref == st.ref_id else f" (queue suggested ref {st.ref_id})")]
    status = None
    if st.sample_id:
        rec = ctx.reads.get_sample(st.sample_id, images=False)
        status = rec.sample.status
        parts.append(f"sample `{st.sample_id}` **{status_label(status)}** v{rec.version}")
    minutes = round(ctx.config.assignment_ttl_s / 60)
    if status in (None, "draft"):
        parts.append(f"held for you {minutes} min (Release gives it back)")
    parts.append(f"{ctx.queue.open_count(user)} open")
    lines = [" · ".join(parts)]
    if st.sample_id:
        backs = [r for r in ctx.reads.get_reviews(st.sample_id) if r.decision in ("send_back", "reject")]
        if backs and status in ("draft", "rejected"):
            what = "sent it back" if status == "draft" else "rejected it"
            lines.append(f"**{backs[-1].reviewer} {what}:** _{backs[-1].comment}_")
    return "  \n".join(lines)


def _ref_markdown(ctx, ref_id: int | None) -> str:
    if ref_id is None:
        return ""
    from refcoco_edit.text.prompts import ref_sentences

    ref = ctx.data.ref(ref_id)
    v = ctx.verdict(ref_id)
    head = "**Eligible** source object" if v.eligible else "**Not eligible** by the selection rules"
    sents = "\n".join(f"{i + 1}. {s}" for i, s in enumerate(ref_sentences(ref))) or "_no expressions_"
    reasons = "\n".join(f"- {r}" for r in v.reasons)
    return f"**Ref {ref_id}** · {v.category}\n\nReferring expressions:\n\n{sents}\n\n{head}:\n\n{reasons}"


def _objects_choices(ctx, st: AnnotateState) -> Choices:
    if st.image_id is None:
        return Choices()
    out = []
    for obj in ctx.objects(st.image_id):
        cat = ctx.category_name(ctx.data.ann(obj.ann_id).get("category_id", -1))
        tag = f"ref {obj.ref_id}" if obj.ref_id is not None else "no expression"
        out.append((f"object {obj.ann_id} · {cat} · {tag}", obj.ann_id))
    return Choices(out, st.ann_id)


def _sentence_choices(ctx, st: AnnotateState) -> Choices:
    if st.picked_ref is None:
        return Choices()
    from refcoco_edit.text.prompts import ref_sentences

    sents = ref_sentences(ctx.data.ref(st.picked_ref))
    return Choices([(s, i) for i, s in enumerate(sents)], st.sent_index if st.sent_index < len(sents) else 0)


def _object_mask(ctx, st: AnnotateState) -> np.ndarray:
    return ctx.ann_mask(st.ann_id)


def _picture(ctx, st: AnnotateState):
    if st.image_id is None:
        return None
    region = st.region
    if region is not None and st.ann_id is not None and np.array_equal(region, _object_mask(ctx, st)):
        region = None  # the default region is the picked object, already drawn
    image = ctx.image(st.image_id)
    picture = outline_objects(image, ctx.objects(st.image_id), suggested=st.ref_id, picked=st.ann_id, region=region,
                              outlines=st.outlines)
    return enlarge(picture, display_factor(image.size))


def _prompt_view(st: AnnotateState) -> list[tuple[str, str | None]] | None:
    if not st.prompt:
        return None
    return highlight(st.prompt["prompt"], st.prompt["referring_spans"], st.prompt["edit_spans"])


def _rephrasing_choices(st: AnnotateState) -> Choices:
    return Choices([(r["prompt"], i) for i, r in enumerate(st.rephrasings)], None)


def _region_editor(ctx, st: AnnotateState) -> dict | None:
    if st.image_id is None:
        return None
    return editor_value(ctx.image(st.image_id), st.region, REGION_COLOUR)


def _candidates_view(ctx, st: AnnotateState) -> list[tuple[Any, str]]:
    """The gallery: each candidate captioned with its number, the same number the number box,
    keys 1-8 and `pick_candidate` (0-based there) use: its position in the gallery."""
    if not st.sample_id:
        return []
    cands = ctx.reads.get_candidates(st.sample_id)
    st.candidate_ids = [c.candidate_id for c in cands]
    return [(c.image, f"{n} · {c.params.get('pipeline', '')} · seed {c.seed}"
                      + (" · chosen" if c.candidate_id == st.chosen else "")) for n, c in enumerate(cands, 1)]


def candidate_number(st: AnnotateState) -> int | None:
    """The chosen candidate's number in the gallery (1-based), None when none is chosen."""
    if st.chosen is None or st.chosen not in st.candidate_ids:
        return None
    return st.candidate_ids.index(st.chosen) + 1


def _result_views(ctx, st: AnnotateState) -> dict[str, Any]:
    if st.chosen is None or not st.sample_id:
        return {"result": None, "me_editor": None, "candidate_number": None}
    cand = _candidate(ctx, st, st.chosen)
    return {"result": outlined(cand.image, st.edit_mask, EDIT_MASK_COLOUR),
            "me_editor": editor_value(cand.image, st.edit_mask, EDIT_MASK_COLOUR),
            "candidate_number": candidate_number(st)}


def _candidate(ctx, st: AnnotateState, candidate_id: int):
    for c in ctx.reads.get_candidates(st.sample_id):
        if c.candidate_id == candidate_id:
            return c
    raise StateError(f"candidate {candidate_id} is not one of this sample's")


def full_view(ctx, st: AnnotateState, user: str, message: str = "") -> dict[str, Any]:
    view = {
        "item": _item_markdown(ctx, st, user),
        "image": _picture(ctx, st),
        "objects": _objects_choices(ctx, st),
        "ref": _ref_markdown(ctx, st.picked_ref),
        "sentences": _sentence_choices(ctx, st),
        "prompt": _prompt_view(st),
        "edit_type": (st.prompt or {}).get("edit_type") or "replace",
        "target": (st.prompt or {}).get("target", ""),
        "gen_text": default_generation_text(ctx, st),
        "rephrasings": _rephrasing_choices(st),
        "region_editor": _region_editor(ctx, st),
        "example": ctx.uploads.get(st.example_hash) if st.example_hash else None,
        "candidates": _candidates_view(ctx, st),
        "message": message,
    }
    view.update(_result_views(ctx, st))
    return view


def set_outlines(ctx, username: str | None, state: AnnotateState | None, on: Any) -> tuple[AnnotateState, dict]:
    """Show the objects' outlines on the picture, or the image with its true colours only."""
    _user(ctx, username)
    st = fresh(state, AnnotateState)
    st.outlines = bool(on)
    return st, {"image": _picture(ctx, st),
                "message": "Outlines shown." if st.outlines else "Outlines hidden: the image as it is."}


def default_generation_text(ctx, st: AnnotateState) -> str:
    """The text a region-edit model gets: what the region should show after the edit."""
    if not st.prompt:
        return ""
    from refcoco_edit.text.prompts import indefinite

    p = st.prompt
    category = ctx.verdict(st.picked_ref).category if st.picked_ref is not None else ""
    if p["edit_type"] in ("replace", "add"):
        return indefinite(p["target"])
    if p["edit_type"] == "attribute":
        return f"{p['target']} {category}".strip()
    if p["edit_type"] == "remove":
        return "background"
    return p["edit_text"]


# ---------------------------------------------------------------------------------- loading items


def _release(ctx, st: AnnotateState, user: str) -> None:
    for ref_id in {st.ref_id, st.picked_ref} - {None}:
        ctx.queue.release(ref_id, user)


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
    user = _user(ctx, username).name
    old = fresh(state, AnnotateState)
    _release(ctx, old, user)
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
    user = _user(ctx, username).name
    old = fresh(state, AnnotateState)
    _release(ctx, old, user)
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
    return my_sample_rows(ctx, _user(ctx, username).name)


def reopen(ctx, username: str | None, state: AnnotateState | None, sample_id: Any) -> tuple[AnnotateState, dict]:
    """Open one of the user's drafts (one sent back, say) from My samples to work on it again."""
    user = _user(ctx, username)
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
    _user(ctx, username)
    st = fresh(state, AnnotateState)
    _need_image(st)
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
    user = _user(ctx, username).name
    st = fresh(state, AnnotateState)
    _need_image(st)
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


# ---------------------------------------------------------------------------------- prompt


def compose_prompt(ctx, username: str | None, state: AnnotateState | None, sent_index: int | None, edit_type: str,
                   target: str, *, new_wording: bool = False) -> tuple[AnnotateState, dict]:
    """Build the prompt from one of the ref's expressions, an edit type and a target (or free edit
    text, edit type "other", optionally with {ref}); `new_wording` picks another template."""
    from refcoco_edit.text.prompts import compose, ref_sentences

    user = _user(ctx, username).name
    st = fresh(state, AnnotateState)
    _need_pick(st)
    sents = ref_sentences(ctx.data.ref(st.picked_ref))
    if not sents:
        raise StateError(f"ref {st.picked_ref} has no referring expression")
    try:
        idx = 0 if sent_index in (None, "") else int(sent_index)
    except (TypeError, ValueError):
        raise StateError(f"not an expression number: {sent_index!r}") from None
    if not 0 <= idx < len(sents):
        raise StateError(f"ref {st.picked_ref} has {len(sents)} expression(s); no number {idx + 1}")
    kind = (edit_type or "replace").strip()
    if kind in TARGET_HINTS and not (target or "").strip():
        raise StateError(f"type {TARGET_HINTS[kind]} in the Target box first")
    if new_wording:
        st.prompt_seed += 1
    p = compose(sents[idx], edit_type or "", target or "", seed=f"{user}:{st.picked_ref}:{st.prompt_seed}")
    st.prompt, st.sent_index, st.rephrasings = p.to_dict(), idx, []
    saved = _autosave(ctx, st, user)
    return st, {"prompt": _prompt_view(st), "gen_text": default_generation_text(ctx, st),
                "rephrasings": _rephrasing_choices(st), "message": f"Prompt: {p.prompt}{saved}"}


TARGET_HINTS = {"replace": "the new object (e.g. giraffe)", "attribute": "the attribute (e.g. red)",
                "add": "the object to add (e.g. a cat)", "other": "the edit text"}


def rephrase(ctx, username: str | None, state: AnnotateState | None, n: int = 4) -> tuple[AnnotateState, dict]:
    """Ask the LLM (or the offline rephraser) for rephrasings of the prompt; each is checked."""
    from refcoco_edit.text.prompts import Prompt

    _user(ctx, username)
    st = fresh(state, AnnotateState)
    _need_pick(st)
    if not st.prompt:
        raise StateError("compose a prompt first")
    n = max(1, min(int(n or 4), 10))
    enr = ctx.rephraser.rephrase(Prompt.from_dict(st.prompt), n, category=ctx.verdict(st.picked_ref).category)
    st.rephrasings = [r.to_dict() for r in enr.rephrasings]
    msg = f"{len(st.rephrasings)} rephrasing(s)"
    if enr.rejected:
        msg += f"; {len(enr.rejected)} refused by the checks (e.g. {enr.rejected[0].reason})"
    if enr.error:
        msg += f"; error: {enr.error}"
    return st, {"rephrasings": _rephrasing_choices(st), "message": msg}


def _rephrasing_index(st: AnnotateState, index: Any) -> int:
    try:
        i = int(index)
    except (TypeError, ValueError):
        raise StateError("choose a rephrasing first") from None
    if not 0 <= i < len(st.rephrasings):
        raise StateError("that rephrasing is no longer offered; ask for new ones")
    return i


def accept_rephrasing(ctx, username: str | None, state: AnnotateState | None, index: Any
                      ) -> tuple[AnnotateState, dict]:
    """Use a rephrasing as the prompt (marked reviewed: the annotator read it)."""
    _user(ctx, username)
    st = fresh(state, AnnotateState)
    i = _rephrasing_index(st, index)
    chosen = dict(st.rephrasings.pop(i))
    chosen["reviewed"] = True
    st.prompt = chosen
    saved = _autosave(ctx, st, _user(ctx, username).name)
    return st, {"prompt": _prompt_view(st), "gen_text": default_generation_text(ctx, st),
                "rephrasings": _rephrasing_choices(st), "message": f"Prompt: {chosen['prompt']}{saved}"}


def discard_rephrasing(ctx, username: str | None, state: AnnotateState | None, index: Any
                       ) -> tuple[AnnotateState, dict]:
    _user(ctx, username)
    st = fresh(state, AnnotateState)
    i = _rephrasing_index(st, index)
    dropped = st.rephrasings.pop(i)
    return st, {"rephrasings": _rephrasing_choices(st), "message": f"Discarded: {dropped['prompt']}"}


# ---------------------------------------------------------------------------------- region and example


def set_region(ctx, username: str | None, state: AnnotateState | None, kind: str) -> tuple[AnnotateState, dict]:
    """The region to edit from the object: its mask ("object"), its box ("box") or the mask grown ("grow")."""
    from refcoco_edit.pipelines.base import dilate

    _user(ctx, username)
    st = fresh(state, AnnotateState)
    _need_pick(st)
    m = np.array(_object_mask(ctx, st))
    if kind == "object":
        st.region = m
    elif kind == "box":
        st.region = box_mask(m)
    elif kind == "grow":
        st.region = dilate(m, GROW_PX)
    else:
        raise StateError(f"unknown region kind {kind!r}; use one of {', '.join(REGION_KINDS)}")
    return st, {"image": _picture(ctx, st), "region_editor": _region_editor(ctx, st),
                "message": f"Region: the object's {'mask' if kind == 'object' else kind} ({int(st.region.sum())} px)."}


def _strokes(value: Any, size: tuple[int, int], mode: str) -> np.ndarray:
    from annotation_app.limits import check_decoded_layers

    if mode not in STROKE_MODES:
        raise StateError(f"unknown brush mode {mode!r}; use one of {', '.join(STROKE_MODES)}")
    if isinstance(value, dict):
        check_decoded_layers([lay for lay in (value.get("layers") or []) if lay is not None], "brush strokes")
    strokes = mask_from_editor(value, size)
    if strokes is None or not strokes.any():
        raise StateError("nothing was painted: paint with the brush first")
    return strokes


def region_from_editor(ctx, username: str | None, state: AnnotateState | None, value: Any, mode: str = "replace"
                       ) -> tuple[AnnotateState, dict]:
    """The region after brush strokes: they are the new region, or are added to or cut from the
    current one. Any shape is allowed, not only the object's."""
    _user(ctx, username)
    st = fresh(state, AnnotateState)
    _need_pick(st)
    m = apply_strokes(st.region, _strokes(value, ctx.image(st.image_id).size, mode), mode)
    if not m.any():
        raise StateError("the region would be empty: paint over the area to edit")
    if m.all():
        raise StateError("the region would cover the whole image: leave some of it unedited")
    st.region = m
    return st, {"image": _picture(ctx, st), "region_editor": _region_editor(ctx, st),
                "message": f"Region: drawn ({int(m.sum())} px)."}


def use_upload(ctx, username: str | None, state: AnnotateState | None, path: Any, *,
               upload_root: Any) -> tuple[AnnotateState, dict]:
    """An uploaded picture of the substitute object (composition), checked and kept in the store's folder."""
    _user(ctx, username)
    st = fresh(state, AnnotateState)
    _need_pick(st)
    digest, image = ctx.uploads.add_file(path, upload_root=upload_root, max_bytes=ctx.config.max_upload_bytes,
                                         max_pixels=ctx.config.max_upload_pixels)
    st.example_hash, st.example_source = digest, "upload"
    return st, {"example": image, "message": f"Example: uploaded image {image.width}x{image.height}."}


def example_objects(ctx, username: str | None, category_id: Any, limit: int = 100) -> Choices:
    """Objects of one category (across the dataset) that can serve as the example."""
    _user(ctx, username)
    try:
        cat = int(category_id)
    except (TypeError, ValueError):
        return Choices()
    out = []
    for ann in ctx.data.anns:
        if int(ann.get("category_id", -1)) == cat:
            out.append((f"object {ann['id']} (image {ann['image_id']})", int(ann["id"])))
            if len(out) >= limit:
                break
    return Choices(out, out[0][1] if out else None)


def use_example_object(ctx, username: str | None, state: AnnotateState | None, ann_id: Any
                       ) -> tuple[AnnotateState, dict]:
    """A crop of another object of the dataset as the example (composition)."""
    from refcoco_edit.pipelines.composition import crop_object

    _user(ctx, username)
    st = fresh(state, AnnotateState)
    _need_pick(st)
    try:
        ann = ctx.data.ann(int(ann_id))
    except (TypeError, ValueError):
        raise StateError("choose an example object first") from None
    if int(ann["id"]) == st.ann_id:
        raise StateError("the example must be another object than the source")
    crop = crop_object(ctx.image(int(ann["image_id"])), ctx.ann_mask(int(ann["id"])))
    st.example_hash, st.example_source = ctx.uploads.put(crop), f"object {ann['id']}"
    return st, {"example": crop, "message": f"Example: object {ann['id']}."}


# ---------------------------------------------------------------------------------- the sample


def _check_editable(ctx, st: AnnotateState, user) -> Any:
    rec = ctx.reads.get_sample(st.sample_id, images=False)
    s = rec.sample
    if s.annotator != user.name and user.role != "admin":
        raise AccessDenied(f"sample {st.sample_id} is {s.annotator}'s; only they (or an admin) may change it")
    if s.status != "draft":
        raise StateError(f"sample {st.sample_id} is {status_label(s.status)}"
                         + (": it waits for review" if s.status == "candidate" else ": it is final"))
    return rec


def _ensure_sample(ctx, st: AnnotateState, user) -> None:
    """Create the session's draft sample when it has none yet."""
    from refcoco_edit.schema import Sample
    from refcoco_edit.store import DuplicateKeyError

    if st.sample_id is not None:
        _check_editable(ctx, st, user)
        return
    ref = ctx.data.ref(st.picked_ref)
    sample = Sample(sample_id="", image_id=st.image_id, ref_id=st.picked_ref, ann_id=st.ann_id, split=str(ref["split"]),
                    source_image=ctx.image(st.image_id), edited_image=None,
                    source_mask=np.array(_object_mask(ctx, st)), edit_mask=None, prompt="", referring_text="",
                    edit_text="", referring_spans=[], edit_spans=[], edit_type="", target="", pipeline="manual",
                    generation={}, annotator=user.name, status="draft")
    try:
        sid = ctx.store.add_sample(sample, user.name, key=sample_key(st.picked_ref))
    except DuplicateKeyError as exc:
        raise StateError(f"ref {st.picked_ref} already has a sample ({exc.sample_id}), made meanwhile") from None
    st.sample_id, st.version = sid, ctx.reads.get_sample(sid, images=False).version
    ctx.queue.note(SampleInfo(sid, st.picked_ref, "draft", user.name))


def _int_in(value: Any, name: str, low: int, high: int) -> int:
    try:
        v = int(value)
        if float(value) != v:
            raise ValueError
    except (TypeError, ValueError):
        raise StateError(f"{name} must be a whole number, got {value!r}") from None
    if not low <= v <= high:
        raise StateError(f"{name} must be between {low} and {high}, got {v}")
    return v


def generate(ctx, username: str | None, state: AnnotateState | None, pipeline: str, num: Any, seed: Any,
             steps: Any, text: str | None, progress: Progress = None) -> tuple[AnnotateState, dict]:
    """Run a pipeline on the region and attach its `num` candidates to the (draft) sample."""
    from refcoco_edit.pipelines.capabilities import EditRequest
    from refcoco_edit.store import Candidate as StoredCandidate
    from refcoco_edit.store import rle

    user = _user(ctx, username)
    st = fresh(state, AnnotateState)
    _need_pick(st)
    if pipeline not in ctx.pipeline_names():
        raise StateError(f"choose a pipeline: {', '.join(ctx.pipeline_names())}")
    num = _int_in(num, "the number of candidates", 1, ctx.config.max_candidates)
    seed = _int_in(st.next_seed if seed in (None, "") else seed, "the seed", 0, 2**31 - 1)
    steps = _int_in(ctx.config.default_steps if steps in (None, "") else steps, "steps", 1, MAX_STEPS)
    text = (text or "").strip()
    region = st.region if st.region is not None else np.array(_object_mask(ctx, st))
    cls = ctx.pipeline_class(pipeline)
    title = pipeline.replace("_", " ")
    if cls.needs_example and not st.example_hash:
        raise StateError(f"{title} needs an example: upload a picture or choose an object")
    if cls.needs_text and not text:
        raise StateError(f"{title} needs a text saying what the region should show")
    example = ctx.uploads.get(st.example_hash) if cls.needs_example else None
    request = EditRequest(num=num, seed=seed, steps=steps, text=text or None, example=example,
                          example_source=st.example_source if cls.needs_example else None)
    kwargs = cls.generate_kwargs(request)
    if progress is not None:
        progress(0.05, desc=f"loading {pipeline}")
    pipe, lock = ctx.pipeline(pipeline)
    _ensure_sample(ctx, st, user)
    if progress is not None:
        progress(0.2, desc=f"generating {num} candidate(s)")
    t0 = time.perf_counter()
    with lock:
        cands = pipe.generate(ctx.image(st.image_id), region, **kwargs)
    took = time.perf_counter() - t0
    region_rle = rle.encode(region)
    stored = []
    for c in cands:
        params = dict(c.params)
        params.update(pipeline=pipeline, region=region_rle, text=text)
        if example is not None:
            params.update(example=st.example_hash, example_source=st.example_source)
        stored.append(StoredCandidate(image=c.image, edit_mask=c.edit_mask, seed=c.seed, params=params,
                                      model=c.model, score=c.score))
    ctx.store.add_candidates(st.sample_id, stored, user.name)
    st.next_seed = seed + num
    _autosave(ctx, st, user.name)
    ctx.queue.claim(st.picked_ref, user.name)  # renew the claim: the annotator is at work
    if progress is not None:
        progress(1.0, desc="done")
    return st, {"candidates": _candidates_view(ctx, st), "item": _item_markdown(ctx, st, user.name),
                "message": f"{len(cands)} candidate(s) from {pipeline} ({getattr(pipe, 'model', '')}) in {took:.1f} s; "
                           "click one to use it."}


def pick_candidate(ctx, username: str | None, state: AnnotateState | None, index: Any) -> tuple[AnnotateState, dict]:
    """Make the `index`-th candidate (in the gallery's order) the sample's reference edit."""
    user = _user(ctx, username)
    st = fresh(state, AnnotateState)
    _need_pick(st)
    if not st.sample_id:
        raise StateError("generate candidates first")
    _check_editable(ctx, st, user)
    cands = ctx.reads.get_candidates(st.sample_id, images=False)
    if not cands:
        raise StateError("generate candidates first")
    i = _int_in(index, "the candidate number", 0, len(cands) - 1)
    cand = cands[i]
    st.version = ctx.store.choose_candidate(st.sample_id, cand.candidate_id, user.name, expected_version=st.version)
    st.chosen, st.edit_mask, st.mask_corrected = cand.candidate_id, cand.edit_mask, False
    saved = _autosave(ctx, st, user.name)
    view = {"candidates": _candidates_view(ctx, st), "item": _item_markdown(ctx, st, user.name),
            "message": f"Using candidate {i + 1} (seed {cand.seed}); M_e is outlined in orange.{saved}"}
    view.update(_result_views(ctx, st))
    return st, view


def correct_edit_mask(ctx, username: str | None, state: AnnotateState | None, value: Any, mode: str = "add"
                      ) -> tuple[AnnotateState, dict]:
    """M_e corrected with the brush over the result: strokes added to it, cut from it, or replacing
    it (saved with the next save or submit)."""
    user = _user(ctx, username)
    st = fresh(state, AnnotateState)
    if st.chosen is None:
        raise StateError("pick a candidate first")
    m = apply_strokes(st.edit_mask, _strokes(value, ctx.image(st.image_id).size, mode), mode)
    if not m.any():
        raise StateError("the corrected M_e would be empty: it must cover the area the edit changed")
    st.edit_mask, st.mask_corrected = m, True
    saved = _autosave(ctx, st, user.name)
    view = {"message": f"M_e corrected ({int(m.sum())} px).{saved}"}
    view.update(_result_views(ctx, st))
    return st, view


def _write(ctx, st: AnnotateState, user: str, status: str) -> None:
    """Write the session's prompt, chosen candidate and M_e into its sample with `status`."""
    rec = ctx.reads.get_sample(st.sample_id, images=False)
    changes: dict[str, Any] = {"annotator": rec.sample.annotator or user, "status": status}
    generation = dict(rec.sample.generation or {})
    if st.prompt:
        p = st.prompt
        changes.update(prompt=p["prompt"], referring_text=p["referring_text"], edit_text=p["edit_text"],
                       referring_spans=p["referring_spans"], edit_spans=p["edit_spans"], edit_type=p["edit_type"],
                       target=p["target"])
        generation.update(prompt_source=p.get("source", "template"), sent_index=st.sent_index)
    if st.chosen is not None:
        cand = next((c for c in ctx.reads.get_candidates(st.sample_id, images=False)
                     if c.candidate_id == st.chosen), None)
        if cand is not None and cand.params.get("pipeline"):
            changes["pipeline"] = cand.params["pipeline"]
    if st.edit_mask is not None:
        changes["edit_mask"] = st.edit_mask
        generation["edit_mask_corrected"] = bool(st.mask_corrected)
    changes["generation"] = generation
    st.version = ctx.store.update_sample(st.sample_id, changes, expected_version=st.version, user=user)
    ctx.queue.note(SampleInfo(st.sample_id, st.picked_ref, status, changes["annotator"]))


def _autosave(ctx, st: AnnotateState, user: str) -> str:
    """Keep the work in the session's draft as soon as it changes, so a reload or a closed tab loses
    nothing; a note for the message (nothing before the draft exists: the first generation or
    Save creates it, and takes the prompt along)."""
    if st.sample_id is None:
        return ""
    rec = ctx.reads.get_sample(st.sample_id, images=False)
    if rec.sample.status != "draft":
        return ""
    if rec.sample.annotator != user:
        return " (not saved: someone else's draft; Save to keep it)"
    _write(ctx, st, user, "draft")
    ctx.queue.claim(st.picked_ref, user)
    return " Saved."


def save(ctx, username: str | None, state: AnnotateState | None, *, submit: bool = False
         ) -> tuple[AnnotateState, dict]:
    """Save the work as a draft, or submit it for review (then it must be complete: the store checks)."""
    user = _user(ctx, username)
    st = fresh(state, AnnotateState)
    _need_pick(st)
    if submit:
        if not st.prompt:
            raise StateError("compose a prompt before submitting")
        if st.chosen is None:
            raise StateError("pick a candidate before submitting")
    elif st.sample_id is None and not st.prompt:
        raise StateError("nothing to save yet: compose a prompt or generate candidates first")
    _ensure_sample(ctx, st, user)
    status = "candidate" if submit else "draft"
    _write(ctx, st, user.name, status)
    if submit:
        _release(ctx, st, user.name)
        msg = f"Submitted sample {st.sample_id} for review. Press Next for the next item."
    else:
        ctx.queue.claim(st.picked_ref, user.name)
        msg = f"Saved draft {st.sample_id} (version {st.version})."
    return st, {"item": _item_markdown(ctx, st, user.name), "message": msg}


def save_draft(ctx, username: str | None, state: AnnotateState | None) -> tuple[AnnotateState, dict]:
    return save(ctx, username, state, submit=False)


def submit(ctx, username: str | None, state: AnnotateState | None) -> tuple[AnnotateState, dict]:
    return save(ctx, username, state, submit=True)
