"""What the Annotate tab shows for a session: the item, the picture, the prompt, the candidates, the result."""

from __future__ import annotations

from typing import Any

import numpy as np

from annotation_app.errors import StateError
from annotation_app.handlers.annotate.state import AnnotateState, require_user
from annotation_app.handlers.common import Choices, fresh, status_label
from annotation_app.render import (
    EDIT_MASK_COLOUR,
    REGION_COLOUR,
    display_factor,
    editor_value,
    enlarge,
    highlight,
    outline_objects,
    outlined,
)


def item_markdown(ctx, st: AnnotateState, user: str) -> str:
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


def object_mask(ctx, st: AnnotateState) -> np.ndarray:
    return ctx.ann_mask(st.ann_id)


def shown_picture(ctx, st: AnnotateState):
    if st.image_id is None:
        return None
    region = st.region
    if region is not None and st.ann_id is not None and np.array_equal(region, object_mask(ctx, st)):
        region = None  # the default region is the picked object, already drawn
    image = ctx.image(st.image_id)
    picture = outline_objects(image, ctx.objects(st.image_id), suggested=st.ref_id, picked=st.ann_id, region=region,
                              outlines=st.outlines)
    return enlarge(picture, display_factor(image.size))


def prompt_view(st: AnnotateState) -> list[tuple[str, str | None]] | None:
    if not st.prompt:
        return None
    return highlight(st.prompt["prompt"], st.prompt["referring_spans"], st.prompt["edit_spans"])


def rephrasing_choices(st: AnnotateState) -> Choices:
    return Choices([(r["prompt"], i) for i, r in enumerate(st.rephrasings)], None)


def region_editor(ctx, st: AnnotateState) -> dict | None:
    if st.image_id is None:
        return None
    return editor_value(ctx.image(st.image_id), st.region, REGION_COLOUR)


def candidates_view(ctx, st: AnnotateState) -> list[tuple[Any, str]]:
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


def result_views(ctx, st: AnnotateState) -> dict[str, Any]:
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
        "item": item_markdown(ctx, st, user),
        "image": shown_picture(ctx, st),
        "objects": _objects_choices(ctx, st),
        "ref": _ref_markdown(ctx, st.picked_ref),
        "sentences": _sentence_choices(ctx, st),
        "prompt": prompt_view(st),
        "edit_type": (st.prompt or {}).get("edit_type") or "replace",
        "target": (st.prompt or {}).get("target", ""),
        "gen_text": default_generation_text(ctx, st),
        "rephrasings": rephrasing_choices(st),
        "region_editor": region_editor(ctx, st),
        "example": ctx.uploads.get(st.example_hash) if st.example_hash else None,
        "candidates": candidates_view(ctx, st),
        "message": message,
    }
    view.update(result_views(ctx, st))
    return view


def set_outlines(ctx, username: str | None, state: AnnotateState | None, on: Any) -> tuple[AnnotateState, dict]:
    """Show the objects' outlines on the picture, or the image with its true colours only."""
    require_user(ctx, username)
    st = fresh(state, AnnotateState)
    st.outlines = bool(on)
    return st, {"image": shown_picture(ctx, st),
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
