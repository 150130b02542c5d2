"""What an annotator and a reviewer meet over a working day, through the handlers: a resubmission
reaches the reviewer, a rejection reaches its annotator, candidate numbers agree everywhere, work
survives a reload, pictures keep the objects' true colours, and the small refusals say what to do."""

from __future__ import annotations

import numpy as np
import pytest

from annotation_app.errors import AccessDenied, StateError
from annotation_app.handlers import annotate as A
from annotation_app.handlers import review as R
from annotation_app.render import EDIT_MASK_COLOUR, PICKED_COLOUR, display_factor, outline


def submitted(ctx, user="ann1", state=None):
    st, _ = A.next_item(ctx, user, state)
    st, _ = A.compose_prompt(ctx, user, st, 0, "remove", "")
    st, _ = A.generate(ctx, user, st, "classical_inpaint", 1, 0, None, "")
    st, _ = A.pick_candidate(ctx, user, st, 0)
    st, _ = A.submit(ctx, user, st)
    return st


def test_reviewers_next_finds_a_resubmission_of_the_sample_on_screen(ctx):
    st = submitted(ctx)
    rev, view = R.next_review(ctx, "rev1", None)
    assert rev.sample_id == st.sample_id
    rev, _ = R.send_back(ctx, "rev1", rev, "make the region larger")
    # the annotator gets the draft back first and submits it again
    again, view = A.next_item(ctx, "ann1", None)
    assert again.sample_id == st.sample_id and "make the region larger" in view["item"]
    A.submit(ctx, "ann1", again)
    # the reviewer still has the sample on screen and presses Next: it is offered again
    rev2, view = R.next_review(ctx, "rev1", rev)
    assert rev2.sample_id == st.sample_id, view["message"]
    assert "Reviewing" in view["message"]


def test_skipping_an_undecided_sample_moves_on_but_comes_back(ctx):
    a = submitted(ctx, "ann1")
    b = submitted(ctx, "ann2")
    first, _ = R.next_review(ctx, "rev1", None)
    second, _ = R.next_review(ctx, "rev1", first)  # skip the first
    assert {first.sample_id, second.sample_id} == {a.sample_id, b.sample_id}
    R.accept(ctx, "rev1", second)
    # only the skipped one waits: Next offers it again instead of "nothing to review"
    third, view = R.next_review(ctx, "rev1", R.ReviewState(second.sample_id, None, None))
    assert third.sample_id == first.sample_id, view["message"]
    fourth, view = R.next_review(ctx, "rev1", third)
    assert fourth.sample_id == first.sample_id  # still the only one: kept on screen


def test_a_rejection_reaches_its_annotator(ctx):
    st = submitted(ctx)
    rev, _ = R.next_review(ctx, "rev1", None)
    R.reject(ctx, "rev1", rev, "the star is not removed")
    rows = A.my_samples(ctx, "ann1")
    assert [(r[0], r[2], r[4], r[5], r[6]) for r in rows] == [
        (st.sample_id, "rejected", "rejected", "rev1", "the star is not removed")]
    _, view = A.next_item(ctx, "ann1", None)
    assert "1 rejected" in view["message"] and "My samples" in view["message"]
    # other annotators see only their own samples; a rejected sample is final
    assert A.my_samples(ctx, "ann2") == []
    with pytest.raises(StateError, match="only drafts"):
        A.reopen(ctx, "ann1", None, st.sample_id)


def test_a_sent_back_sample_can_be_reopened_from_my_samples(ctx):
    st = submitted(ctx)
    rev, _ = R.next_review(ctx, "rev1", None)
    R.send_back(ctx, "rev1", rev, "use another wording")
    row = A.my_samples(ctx, "ann1")[0]
    assert row[2] == "draft" and row[4] == "sent back" and row[6] == "use another wording"
    _, view = A.next_item(ctx, "ann1", None)
    assert "1 sent back" in view["message"]
    with pytest.raises(AccessDenied, match="ann1's"):
        A.reopen(ctx, "ann2", None, st.sample_id)
    busy, _ = A.next_item(ctx, "ann1", None)  # holds the draft's ref
    with pytest.raises(StateError, match="being annotated by ann1"):
        A.reopen(ctx, "boss", None, st.sample_id)  # an admin may reopen it, but not while it is held
    A.release_item(ctx, "ann1", busy)
    opened, view = A.reopen(ctx, "ann1", None, st.sample_id)
    assert opened.sample_id == st.sample_id and opened.prompt == st.prompt and opened.chosen == st.chosen
    assert "use another wording" in view["item"] and f"ref:{opened.ref_id}" in {
        a.ref_key for a in ctx.store.assignments("ann1")}


def test_release_gives_the_item_back(ctx):
    st, view = A.next_item(ctx, "rev1", None)  # reviewers may annotate: the hold is said on the page
    assert "held for you 30 min" in view["item"]
    st, view = A.release_item(ctx, "rev1", st)
    assert ctx.store.assignments("rev1") == [] and st.image_id is None
    assert "given back" in view["message"]


def test_candidate_numbers_are_gallery_positions(ctx):
    submitted(ctx, "ann2")  # the store's candidate ids no longer start at 1
    st, _ = A.next_item(ctx, "ann1", None)
    st, _ = A.compose_prompt(ctx, "ann1", st, 0, "remove", "")
    st, _ = A.generate(ctx, "ann1", st, "classical_inpaint", 2, 0, None, "")
    st, view = A.generate(ctx, "ann1", st, "classical_inpaint", 2, 5, None, "")
    captions = [caption for _, caption in view["candidates"]]
    assert [c.split(" · ")[0] for c in captions] == ["1", "2", "3", "4"]
    assert min(st.candidate_ids) > 1
    st, view = A.pick_candidate(ctx, "ann1", st, 2)  # the page's number 3
    assert st.chosen == st.candidate_ids[2] and view["candidate_number"] == 3
    assert "candidate 3 " in view["message"]
    assert "chosen" in view["candidates"][2][1] and "chosen" not in view["candidates"][0][1]
    chosen = [c for c in ctx.store.get_candidates(st.sample_id, images=False) if c.chosen]
    assert [c.candidate_id for c in chosen] == [st.candidate_ids[2]]


def test_a_reload_keeps_the_prompt_and_submit_works(ctx):
    st, _ = A.next_item(ctx, "ann1", None)
    st, _ = A.compose_prompt(ctx, "ann1", st, 0, "replace", "giraffe")
    st, _ = A.generate(ctx, "ann1", st, "classical_inpaint", 2, 0, None, "")
    # the prompt composed before the first generation went into the draft with it
    assert ctx.store.get_sample(st.sample_id, images=False).sample.prompt == st.prompt["prompt"]
    st, view = A.compose_prompt(ctx, "ann1", st, 0, "attribute", "purple")  # changed after generating
    assert view["message"].endswith("Saved.")
    st, _ = A.pick_candidate(ctx, "ann1", st, 1)
    # the page is reloaded: a new session with no state presses Next
    back, view = A.next_item(ctx, "ann1", None)
    assert back.sample_id == st.sample_id
    assert back.prompt["prompt"] == st.prompt["prompt"] and "purple" in back.prompt["prompt"]
    assert back.chosen == st.candidate_ids[1] and view["candidate_number"] == 2
    assert view["prompt"] is not None
    back, view = A.submit(ctx, "ann1", back)
    s = ctx.store.get_sample(back.sample_id, images=False).sample
    assert s.status == "candidate" and s.edit_type == "attribute" and "purple" in s.prompt


def test_pictures_keep_true_colours_inside_objects(ctx):
    st, view = A.next_item(ctx, "ann1", None)
    f = display_factor(ctx.image(st.image_id).size)
    shown = np.asarray(view["image"])[::f, ::f]
    src = np.asarray(ctx.image(st.image_id).convert("RGB"))
    obj = np.asarray(ctx.ann_mask(st.ann_id)).astype(bool)
    inside = obj & ~outline(obj, 3)
    assert inside.any() and np.array_equal(shown[inside], src[inside])  # no tint over the picked object
    assert (shown[outline(obj, 1)] == PICKED_COLOUR).all()
    # the outlines can be hidden: the image as it is
    st, view = A.set_outlines(ctx, "ann1", st, False)
    assert np.array_equal(np.asarray(view["image"])[::f, ::f], src)
    st, view = A.set_outlines(ctx, "ann1", st, True)
    assert not np.array_equal(np.asarray(view["image"])[::f, ::f], src)
    # the result: M_e outlined, its inside the candidate's own pixels
    st, _ = A.compose_prompt(ctx, "ann1", st, 0, "remove", "")
    st, _ = A.generate(ctx, "ann1", st, "classical_inpaint", 1, 0, None, "")
    st, view = A.pick_candidate(ctx, "ann1", st, 0)
    cand = np.asarray(ctx.store.get_candidates(st.sample_id)[0].image.convert("RGB"))
    me = st.edit_mask.astype(bool)
    me_inside = me & ~outline(me, 4)
    result = np.asarray(view["result"])
    assert np.array_equal(result[me_inside], cand[me_inside]) and (result[outline(me, 1)] == EDIT_MASK_COLOUR).all()
    # the reviewer's source: M outlined in magenta, the object's colours untouched
    st, _ = A.submit(ctx, "ann1", st)
    _, rview = R.next_review(ctx, "rev1", None)
    source = np.asarray(rview["source"])
    assert np.array_equal(source[inside], src[inside]) and (source[outline(obj, 1)] == PICKED_COLOUR).all()


def test_expression_choices_match_the_ref(ctx):
    st, view = A.next_item(ctx, "ann1", None)
    from refcoco_edit.text.prompts import ref_sentences

    n = len(ref_sentences(ctx.data.ref(st.picked_ref)))
    assert [v for _, v in view["sentences"].choices] == list(range(n))


def test_an_empty_draft_is_not_saved(ctx):
    st, _ = A.next_item(ctx, "ann1", None)
    with pytest.raises(StateError, match="nothing to save yet"):
        A.save_draft(ctx, "ann1", st)
    assert ctx.store.count() == 0
    st, _ = A.compose_prompt(ctx, "ann1", st, 0, "remove", "")
    st, view = A.save_draft(ctx, "ann1", st)
    assert ctx.store.count() == 1 and "draft" in view["item"]


def test_people_read_submitted_not_candidate(ctx):
    st = submitted(ctx)
    _, view = A.next_item(ctx, "ann1", None)  # (another item)
    rows = A.my_samples(ctx, "ann1")
    assert rows[0][2] == "submitted"
    rev, view = R.next_review(ctx, "rev1", None)
    assert "**submitted**" in view["info"] and "candidate**" not in view["info"]
    R.accept(ctx, "rev1", rev)
    with pytest.raises(StateError, match="is accepted"):
        A.save_draft(ctx, "ann1", st)
