"""The sample: created on the first generation or save, its candidates, the chosen one and M_e, saved
(every change at once, so a reload loses nothing) and submitted for review."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from annotation_app.errors import AccessDenied, StateError
from annotation_app.handlers.annotate.region import painted_strokes
from annotation_app.handlers.annotate.state import (
    MAX_STEPS,
    AnnotateState,
    Progress,
    need_pick,
    release_claims,
    require_user,
)
from annotation_app.handlers.annotate.views import candidates_view, item_markdown, object_mask, result_views
from annotation_app.handlers.common import fresh, status_label
from annotation_app.queue import SampleInfo, sample_key
from annotation_app.render import apply_strokes


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
                    source_mask=np.array(object_mask(ctx, st)), edit_mask=None, prompt="", referring_text="",
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

    user = require_user(ctx, username)
    st = fresh(state, AnnotateState)
    need_pick(st)
    if pipeline not in ctx.pipeline_names():
        raise StateError(f"choose a pipeline: {', '.join(ctx.pipeline_names())}")
    num = _int_in(num, "the number of candidates", 1, ctx.config.max_candidates)
    seed = _int_in(st.next_seed if seed in (None, "") else seed, "the seed", 0, 2**31 - 1)
    steps = _int_in(ctx.config.default_steps if steps in (None, "") else steps, "steps", 1, MAX_STEPS)
    text = (text or "").strip()
    region = st.region if st.region is not None else np.array(object_mask(ctx, st))
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
    autosave(ctx, st, user.name)
    ctx.queue.claim(st.picked_ref, user.name)  # renew the claim: the annotator is at work
    if progress is not None:
        progress(1.0, desc="done")
    return st, {"candidates": candidates_view(ctx, st), "item": item_markdown(ctx, st, user.name),
                "message": f"{len(cands)} candidate(s) from {pipeline} ({getattr(pipe, 'model', '')}) in {took:.1f} s; "
                           "click one to use it."}


def pick_candidate(ctx, username: str | None, state: AnnotateState | None, index: Any) -> tuple[AnnotateState, dict]:
    """Make the `index`-th candidate (in the gallery's order) the sample's reference edit."""
    user = require_user(ctx, username)
    st = fresh(state, AnnotateState)
    need_pick(st)
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
    saved = autosave(ctx, st, user.name)
    view = {"candidates": candidates_view(ctx, st), "item": item_markdown(ctx, st, user.name),
            "message": f"Using candidate {i + 1} (seed {cand.seed}); M_e is outlined in orange.{saved}"}
    view.update(result_views(ctx, st))
    return st, view


def correct_edit_mask(ctx, username: str | None, state: AnnotateState | None, value: Any, mode: str = "add"
                      ) -> tuple[AnnotateState, dict]:
    """M_e corrected with the brush over the result: strokes added to it, cut from it, or replacing
    it (saved with the next save or submit)."""
    user = require_user(ctx, username)
    st = fresh(state, AnnotateState)
    if st.chosen is None:
        raise StateError("pick a candidate first")
    m = apply_strokes(st.edit_mask, painted_strokes(value, ctx.image(st.image_id).size, mode), mode)
    if not m.any():
        raise StateError("the corrected M_e would be empty: it must cover the area the edit changed")
    st.edit_mask, st.mask_corrected = m, True
    saved = autosave(ctx, st, user.name)
    view = {"message": f"M_e corrected ({int(m.sum())} px).{saved}"}
    view.update(result_views(ctx, st))
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


def autosave(ctx, st: AnnotateState, user: str) -> str:
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
    user = require_user(ctx, username)
    st = fresh(state, AnnotateState)
    need_pick(st)
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
        release_claims(ctx, st, user.name)
        msg = f"Submitted sample {st.sample_id} for review. Press Next for the next item."
    else:
        ctx.queue.claim(st.picked_ref, user.name)
        msg = f"Saved draft {st.sample_id} (version {st.version})."
    return st, {"item": item_markdown(ctx, st, user.name), "message": msg}


def save_draft(ctx, username: str | None, state: AnnotateState | None) -> tuple[AnnotateState, dict]:
    return save(ctx, username, state, submit=False)


def submit(ctx, username: str | None, state: AnnotateState | None) -> tuple[AnnotateState, dict]:
    return save(ctx, username, state, submit=True)
