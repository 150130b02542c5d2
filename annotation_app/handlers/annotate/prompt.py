"""The prompt: composed from a referring expression and an edit, or one of the LLM's checked rephrasings."""

from __future__ import annotations

from typing import Any

from annotation_app.errors import StateError
from annotation_app.handlers.annotate.sample import autosave
from annotation_app.handlers.annotate.state import AnnotateState, need_pick, require_user
from annotation_app.handlers.annotate.views import default_generation_text, prompt_view, rephrasing_choices
from annotation_app.handlers.common import fresh


def compose_prompt(ctx, username: str | None, state: AnnotateState | None, sent_index: int | None, edit_type: str,
                   target: str, *, new_wording: bool = False) -> tuple[AnnotateState, dict]:
    """Build the prompt from one of the ref's expressions, an edit type and a target (or free edit
    text, edit type "other", optionally with {ref}); `new_wording` picks another template."""
    from refcoco_edit.text.prompts import compose, ref_sentences

    user = require_user(ctx, username).name
    st = fresh(state, AnnotateState)
    need_pick(st)
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
    saved = autosave(ctx, st, user)
    return st, {"prompt": prompt_view(st), "gen_text": default_generation_text(ctx, st),
                "rephrasings": rephrasing_choices(st), "message": f"Prompt: {p.prompt}{saved}"}


TARGET_HINTS = {"replace": "the new object (e.g. giraffe)", "attribute": "the attribute (e.g. red)",
                "add": "the object to add (e.g. a cat)", "other": "the edit text"}


def rephrase(ctx, username: str | None, state: AnnotateState | None, n: int = 4) -> tuple[AnnotateState, dict]:
    """Ask the LLM (or the offline rephraser) for rephrasings of the prompt; each is checked."""
    from refcoco_edit.text.prompts import Prompt

    require_user(ctx, username)
    st = fresh(state, AnnotateState)
    need_pick(st)
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
    return st, {"rephrasings": rephrasing_choices(st), "message": msg}


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
    require_user(ctx, username)
    st = fresh(state, AnnotateState)
    i = _rephrasing_index(st, index)
    chosen = dict(st.rephrasings.pop(i))
    chosen["reviewed"] = True
    st.prompt = chosen
    saved = autosave(ctx, st, require_user(ctx, username).name)
    return st, {"prompt": prompt_view(st), "gen_text": default_generation_text(ctx, st),
                "rephrasings": rephrasing_choices(st), "message": f"Prompt: {chosen['prompt']}{saved}"}


def discard_rephrasing(ctx, username: str | None, state: AnnotateState | None, index: Any
                       ) -> tuple[AnnotateState, dict]:
    require_user(ctx, username)
    st = fresh(state, AnnotateState)
    i = _rephrasing_index(st, index)
    dropped = st.rephrasings.pop(i)
    return st, {"rephrasings": rephrasing_choices(st), "message": f"Discarded: {dropped['prompt']}"}
