"""The annotator's actions, end to end through the handlers, and every refusal."""

from __future__ import annotations

import numpy as np
import pytest

from annotation_app.errors import AccessDenied, NotSignedIn, StateError
from annotation_app.handlers import annotate as A
from annotation_app.render import REGION_COLOUR, display_factor, overlay
from refcoco_edit.errors import InputError
from refcoco_edit.schema import validate
from refcoco_edit.store import ConflictError
from tests.annotation_app.conftest import inside_pixel


def start(ctx, user="ann1"):
    st, view = A.next_item(ctx, user, None)
    assert st.ref_id is not None, view["message"]
    return st, view


def composed(ctx, user="ann1", edit_type="remove", target=""):
    st, _ = start(ctx, user)
    st, _ = A.compose_prompt(ctx, user, st, 0, edit_type, target)
    return st


def view_size(ctx, st):
    return A.full_view(ctx, st, "ann1")["image"].size


def test_next_item_claims_a_ref_and_shows_it(ctx):
    st, view = start(ctx)
    ref = ctx.data.ref(st.ref_id)
    assert st.image_id == ref["image_id"] and st.ann_id == ref["ann_id"] and st.picked_ref == st.ref_id
    assert [a.ref_key for a in ctx.store.assignments("ann1")] == [f"ref:{st.ref_id}"]
    # the picture is the source image, enlarged twice, with outlines drawn
    src = np.asarray(ctx.image(st.image_id))
    shown = np.asarray(view["image"])[::2, ::2]
    assert shown.shape == src.shape and (shown != src).any()
    assert (shown == src).all(axis=2).mean() > 0.8
    assert view["objects"].value == st.ann_id
    assert "Referring expressions" in view["ref"] and "igible" in view["ref"]
    assert [label for label, _ in view["sentences"].choices][0] == ctx.data.ref(st.ref_id)["sentences"][0]["sent"]


def test_two_annotators_never_get_the_same_ref(ctx):
    a, _ = start(ctx, "ann1")
    b, _ = start(ctx, "ann2")
    assert a.ref_id != b.ref_id
    # next moves on and releases the previous claim
    a2, _ = A.next_item(ctx, "ann1", a)
    assert a2.ref_id not in (a.ref_id, b.ref_id)
    assert [x.ref_key for x in ctx.store.assignments("ann1")] == [f"ref:{a2.ref_id}"]


def test_expired_claim_goes_back_to_the_queue(make_ctx):
    ctx = make_ctx(assignment_ttl_s=0.05)
    a, _ = start(ctx, "ann1")
    import time

    time.sleep(0.1)
    b, _ = start(ctx, "ann2")
    assert b.ref_id == a.ref_id  # the first queue item again: ann1's claim expired


def test_pick_by_click_and_by_id(ctx):
    st, _ = start(ctx)
    others = [o for o in ctx.objects(st.image_id) if o.ref_id is not None and o.ann_id != st.ann_id]
    assert others, "RefShapes images hold several referred objects"
    target = others[0]
    x, y = inside_pixel(ctx, st.image_id, target.ann_id)
    f = display_factor(ctx.image(st.image_id).size)
    assert f == 2  # RefShapes pictures (256 x 192) are shown twice as large
    assert view_size(ctx, st) == (256 * f, 192 * f)
    st2, view = A.pick_at(ctx, "ann1", st, x * f + f - 1, y * f)  # any display pixel of that image pixel
    assert view["image"].size == (256 * f, 192 * f)
    assert (st2.ann_id, st2.picked_ref) == (target.ann_id, target.ref_id)
    assert np.array_equal(st2.region, target.mask)
    assert view["objects"].value == target.ann_id
    # both refs are held by ann1 now (the suggested one stays claimed)
    assert {a.ref_key for a in ctx.store.assignments("ann1")} == {f"ref:{st.ref_id}", f"ref:{target.ref_id}"}
    st3, _ = A.pick_object(ctx, "ann1", st2, st.ann_id)
    assert st3.picked_ref == st.ref_id


def test_pick_refusals(ctx):
    st, _ = start(ctx)
    with pytest.raises(StateError, match="no object at"):
        A.pick_at(ctx, "ann1", st, 0, 0)  # RefShapes leaves a background margin
    with pytest.raises(StateError, match="not in this image"):
        A.pick_object(ctx, "ann1", st, 999999)
    with pytest.raises(StateError, match="Next"):
        A.pick_object(ctx, "ann1", A.AnnotateState(), 1)
    # an object without a referring expression cannot be the source
    image_with_plain = next(i["id"] for i in ctx.data.images
                            if any(o.ref_id is None for o in ctx.objects(i["id"])))
    plain = next(o for o in ctx.objects(image_with_plain) if o.ref_id is None)
    st_plain = A.AnnotateState(image_id=image_with_plain)
    with pytest.raises(StateError, match="no referring expression"):
        A.pick_object(ctx, "ann1", st_plain, plain.ann_id)


def test_pick_refuses_a_ref_someone_else_holds_or_made(ctx):
    a, _ = start(ctx, "ann1")
    b = A.AnnotateState(ref_id=a.ref_id, image_id=a.image_id)
    with pytest.raises(StateError, match="being annotated by ann1"):
        A.pick_object(ctx, "ann2", b, a.ann_id)
    a, _ = A.save_draft(ctx, "ann1", A.compose_prompt(ctx, "ann1", a, 0, "remove", "")[0])
    ctx.store.release(f"ref:{a.ref_id}", "ann1")
    with pytest.raises(StateError, match="already has a sample"):
        A.pick_object(ctx, "ann2", b, a.ann_id)


def test_picking_another_object_is_refused_once_a_draft_exists(ctx):
    st = composed(ctx)
    st, _ = A.save_draft(ctx, "ann1", st)
    other = next(o for o in ctx.objects(st.image_id) if o.ref_id is not None and o.ann_id != st.ann_id)
    with pytest.raises(StateError, match="already has a draft"):
        A.pick_object(ctx, "ann1", st, other.ann_id)


def test_compose_shows_parts_and_refuses_bad_input(ctx):
    st, _ = start(ctx)
    st2, view = A.compose_prompt(ctx, "ann1", st, 1, "replace", "giraffe")
    p = st2.prompt
    pieces = view["prompt"]
    assert "".join(t for t, _ in pieces) == p["prompt"]
    assert " ".join(t for t, lab in pieces if lab == "P_r") == p["referring_text"]
    assert " ".join(t for t, lab in pieces if lab == "P_e") == p["edit_text"]
    assert "giraffe" in p["edit_text"]
    sentence = ctx.data.ref(st.ref_id)["sentences"][1]["sent"]
    assert sentence.split()[-1] in p["referring_text"]
    assert view["gen_text"] == "a giraffe"
    # another wording keeps the parts' words
    st3, _ = A.compose_prompt(ctx, "ann1", st2, 1, "replace", "giraffe", new_wording=True)
    assert st3.prompt_seed == st2.prompt_seed + 1 and "giraffe" in st3.prompt["edit_text"]
    # free edit text with the {ref} placeholder
    st4, _ = A.compose_prompt(ctx, "ann1", st, 0, "other", "give {ref} a hat")
    assert st4.prompt["prompt"].startswith("give ") and st4.prompt["prompt"].endswith(" a hat")
    # the refusal speaks of the page's Target box, not of a command-line flag
    with pytest.raises(StateError, match="in the Target box") as refused:
        A.compose_prompt(ctx, "ann1", st, 0, "replace", "")
    assert "--" not in str(refused.value)
    with pytest.raises(InputError, match="unknown edit type"):
        A.compose_prompt(ctx, "ann1", st, 0, "explode", "x")
    with pytest.raises(StateError, match="no number"):
        A.compose_prompt(ctx, "ann1", st, 99, "remove", "")
    with pytest.raises(StateError, match="pick the source object"):
        A.compose_prompt(ctx, "ann1", A.AnnotateState(image_id=st.image_id), 0, "remove", "")


def test_rephrasings_accept_and_discard(ctx):
    st = composed(ctx, edit_type="attribute", target="red")
    st, view = A.rephrase(ctx, "ann1", st, 3)
    assert 1 <= len(st.rephrasings) <= 3 and len(view["rephrasings"].choices) == len(st.rephrasings)
    first = st.rephrasings[0]["prompt"]
    n = len(st.rephrasings)
    st2, _ = A.discard_rephrasing(ctx, "ann1", st, 0)
    assert len(st2.rephrasings) == n - 1 and first not in [r["prompt"] for r in st2.rephrasings]
    st3, view = A.accept_rephrasing(ctx, "ann1", st, 0)
    assert st3.prompt["prompt"] == first and st3.prompt["reviewed"] is True
    assert st3.prompt["source"] == "rephrase"
    assert "".join(t for t, _ in view["prompt"]) == first
    with pytest.raises(StateError, match="no longer offered"):
        A.accept_rephrasing(ctx, "ann1", st2, 99)
    with pytest.raises(StateError, match="compose a prompt"):
        A.rephrase(ctx, "ann1", start(ctx, "ann2")[0], 3)


def test_regions(ctx):
    st, _ = start(ctx)
    obj = np.asarray(ctx.ann_mask(st.ann_id))
    st_box, view = A.set_region(ctx, "ann1", st, "box")
    ys, xs = np.nonzero(obj)
    assert st_box.region.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    # the editor shows the region tinted on the image (Gradio's editor does not show sent layers)
    assert view["region_editor"]["layers"] == []
    assert np.array_equal(np.asarray(view["region_editor"]["background"]),
                          np.asarray(overlay(ctx.image(st.image_id), st_box.region, REGION_COLOUR, alpha=0.5)))
    st_grow, _ = A.set_region(ctx, "ann1", st, "grow")
    assert st_grow.region.sum() > obj.sum() and (st_grow.region >= obj).all()
    # a hand-drawn region that is not the object's shape
    from PIL import Image

    w, h = ctx.image(st.image_id).size
    layer = np.zeros((h, w, 4), np.uint8)
    layer[5:25, 10:60, 3] = 255
    drawn = {"background": None, "layers": [Image.fromarray(layer, "RGBA")], "composite": None}
    st_drawn, _ = A.region_from_editor(ctx, "ann1", st, drawn)
    assert st_drawn.region.sum() == 20 * 50 and st_drawn.region[5:25, 10:60].all()
    # a stroke's bounding box as the region (a box drawn corner to corner)
    diag = np.zeros((h, w, 4), np.uint8)
    for i in range(30):
        diag[10 + i, 20 + 2 * i, 3] = 255
    st_boxed, _ = A.region_from_editor(ctx, "ann1", st, {"layers": [Image.fromarray(diag, "RGBA")]}, "box")
    assert st_boxed.region.sum() == 30 * 59 and st_boxed.region[10:40, 20:79].all()
    # strokes added to, or cut from, the current region
    st_add, _ = A.region_from_editor(ctx, "ann1", st, drawn, "add")
    assert np.array_equal(st_add.region, (obj.astype(bool) | (st_drawn.region > 0)).astype(np.uint8))
    st_cut, _ = A.region_from_editor(ctx, "ann1", st_add, drawn, "remove")
    assert np.array_equal(st_cut.region, (obj.astype(bool) & ~(st_drawn.region > 0)).astype(np.uint8))
    empty = {"layers": [Image.fromarray(np.zeros((h, w, 4), np.uint8), "RGBA")]}
    with pytest.raises(StateError, match="nothing was painted"):
        A.region_from_editor(ctx, "ann1", st, empty)
    with pytest.raises(StateError, match="whole image"):
        A.region_from_editor(ctx, "ann1", st, {"layers": [Image.new("RGBA", (w, h), (0, 0, 0, 255))]})
    with pytest.raises(StateError, match="would be empty"):
        A.region_from_editor(ctx, "ann1", st_drawn, drawn, "remove")
    with pytest.raises(StateError, match="brush mode"):
        A.region_from_editor(ctx, "ann1", st, drawn, "smudge")
    with pytest.raises(StateError, match="unknown region"):
        A.set_region(ctx, "ann1", st, "circle")


def test_removal_end_to_end_with_opencv(ctx):
    st = composed(ctx, edit_type="remove")
    st, view = A.generate(ctx, "ann1", st, "classical_inpaint", 2, 0, None, "")
    assert len(view["candidates"]) == 2 and len(st.candidate_ids) == 2
    rec = ctx.store.get_sample(st.sample_id)
    assert rec.sample.status == "draft" and rec.sample.annotator == "ann1" and rec.key == f"app|ref:{st.picked_ref}"
    st, view = A.pick_candidate(ctx, "ann1", st, 1)
    cands = ctx.store.get_candidates(st.sample_id)
    assert cands[1].chosen and not cands[0].chosen
    assert np.array_equal(st.edit_mask, cands[1].edit_mask)
    # pixels outside the dilated object are the source's (OpenCV removal keeps them)
    src = np.asarray(ctx.image(st.image_id))
    out = np.asarray(cands[1].image)
    from refcoco_edit.pipelines.base import dilate

    far = ~dilate(np.asarray(ctx.ann_mask(st.ann_id)), 20).astype(bool)
    assert np.array_equal(src[far], out[far])
    assert view["result"] is not None and view["me_editor"]["background"].size == ctx.image(st.image_id).size
    # correct M_e with the brush: keep only its left half
    from PIL import Image

    m = st.edit_mask.copy()
    cols = np.nonzero(m.any(axis=0))[0]
    m[:, cols[len(cols) // 2]:] = 0
    layer = np.zeros((*m.shape, 4), np.uint8)
    layer[m.astype(bool), 3] = 200
    painted = {"layers": [Image.fromarray(layer, "RGBA")]}
    grown, _ = A.correct_edit_mask(ctx, "ann1", st, painted, "add")
    assert np.array_equal(grown.edit_mask, st.edit_mask)  # adding a part of it changes nothing
    # each correction is saved at once (the session goes on from the saved version)
    assert ctx.store.get_sample(grown.sample_id, images=False).version == grown.version
    st, _ = A.correct_edit_mask(ctx, "ann1", grown, painted, "replace")
    st, view = A.submit(ctx, "ann1", st)
    rec = ctx.store.get_sample(st.sample_id)
    s = rec.sample
    assert s.status == "candidate" and validate(s) == []
    assert s.pipeline == "classical_inpaint" and s.edit_type == "remove"
    assert np.array_equal(s.edit_mask, m) and s.generation["edit_mask_corrected"] is True
    assert s.generation["model"] == "opencv" and "region" in s.generation
    assert s.prompt == st.prompt["prompt"] and s.referring_spans == st.prompt["referring_spans"]
    assert ctx.store.assignments("ann1") == []
    assert "Submitted" in view["message"]
    # everything was recorded under the annotator's name
    actions = {(e.user, e.action) for e in ctx.store.audit(st.sample_id)}
    assert {("ann1", "add"), ("ann1", "add_candidates"), ("ann1", "choose_candidate"), ("ann1", "update")} <= actions
    # a submitted sample can no longer be changed by the annotator
    with pytest.raises(StateError, match="waits for review"):
        A.save_draft(ctx, "ann1", st)
    # and the ref is done: the queue does not offer it again
    assert ctx.queue.done_for(st.picked_ref, "ann2") is not None


def test_composition_with_upload_and_with_object(ctx, tmp_path):
    from PIL import Image

    st = composed(ctx, edit_type="replace", target="circle")
    with pytest.raises(StateError, match="needs an example"):
        A.generate(ctx, "ann1", st, "composition", 1, 0, 5, "")
    root = tmp_path / "gradio-uploads"
    root.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(root / "ex.png")
    st, view = A.use_upload(ctx, "ann1", st, str(root / "ex.png"), upload_root=root)
    assert view["example"].size == (40, 30)
    assert (ctx.uploads.root / st.example_hash[:2] / f"{st.example_hash}.png").is_file()
    st, view = A.generate(ctx, "ann1", st, "composition", 2, 7, 5, "")
    pipe = ctx.pipeline("composition")[0]
    assert pipe.calls[-1]["num"] == 2 and pipe.calls[-1]["seed"] == 7 and pipe.calls[-1]["steps"] == 5
    assert pipe.calls[-1]["example"].size == (40, 30)
    cands = ctx.store.get_candidates(st.sample_id, images=False)
    assert [c.seed for c in cands] == [7, 8] and cands[0].params["example"] == st.example_hash
    # an example cropped from another object
    other = next(a for a in ctx.data.anns if a["id"] != st.ann_id)
    choices = A.example_objects(ctx, "ann1", other["category_id"])
    assert other["id"] in [v for _, v in choices.choices]
    st2, view = A.use_example_object(ctx, "ann1", st, other["id"])
    assert st2.example_source == f"object {other['id']}" and view["example"] is not None
    with pytest.raises(StateError, match="another object"):
        A.use_example_object(ctx, "ann1", st, st.ann_id)
    # region edit needs a text; the default text comes from the prompt
    with pytest.raises(StateError, match="needs a text"):
        A.generate(ctx, "ann1", st, "region_edit", 1, 0, 5, "")
    st3, _ = A.generate(ctx, "ann1", st, "region_edit", 1, None, 5, "a circle")
    assert ctx.pipeline("region_edit")[0].calls[-1]["text"] == "a circle"
    assert ctx.pipeline("region_edit")[0].calls[-1]["seed"] == 9  # continues after the last seeds


def test_generate_refusals(ctx):
    st = composed(ctx)
    for num in (0, 99, "x", 1.5):
        with pytest.raises(StateError, match="number of candidates"):
            A.generate(ctx, "ann1", st, "classical_inpaint", num, 0, None, "")
    with pytest.raises(StateError, match="steps"):
        A.generate(ctx, "ann1", st, "inpaint", 1, 0, 0, "")
    with pytest.raises(StateError, match="choose a pipeline"):
        A.generate(ctx, "ann1", st, "magic", 1, 0, None, "")
    assert st.sample_id is None and ctx.store.count() == 0  # refusals write nothing


def test_save_and_submit_refusals(ctx):
    st, _ = start(ctx)
    with pytest.raises(StateError, match="compose a prompt"):
        A.submit(ctx, "ann1", st)
    st, _ = A.compose_prompt(ctx, "ann1", st, 0, "remove", "")
    with pytest.raises(StateError, match="pick a candidate"):
        A.submit(ctx, "ann1", st)
    with pytest.raises(StateError, match="pick a candidate"):
        A.correct_edit_mask(ctx, "ann1", st, {"layers": []}, "add")
    with pytest.raises(StateError, match="generate candidates"):
        A.pick_candidate(ctx, "ann1", st, 0)
    st, view = A.save_draft(ctx, "ann1", st)
    rec = ctx.store.get_sample(st.sample_id, images=False)
    assert rec.sample.status == "draft" and rec.sample.prompt == st.prompt["prompt"] and rec.version == st.version
    st, _ = A.generate(ctx, "ann1", st, "classical_inpaint", 1, 0, None, "")
    with pytest.raises(StateError, match="candidate number"):
        A.pick_candidate(ctx, "ann1", st, 5)


def test_conflicting_sessions_are_refused(ctx):
    st = composed(ctx)
    st, _ = A.save_draft(ctx, "ann1", st)
    other_tab = st  # the same draft open in a second tab
    st, _ = A.save_draft(ctx, "ann1", A.compose_prompt(ctx, "ann1", st, 0, "attribute", "blue")[0])
    with pytest.raises(ConflictError):
        A.save_draft(ctx, "ann1", other_tab)
    st, _ = A.generate(ctx, "ann1", st, "classical_inpaint", 1, 0, None, "")
    with pytest.raises(ConflictError):
        A.pick_candidate(ctx, "ann1", other_tab, 0)


def test_only_the_author_or_an_admin_edits_a_draft(ctx):
    st = composed(ctx)
    st, _ = A.save_draft(ctx, "ann1", st)
    with pytest.raises(AccessDenied, match="ann1's"):
        A.save_draft(ctx, "ann2", st)
    st_admin, _ = A.save_draft(ctx, "boss", st)
    assert ctx.store.get_sample(st.sample_id, images=False).sample.annotator == "ann1"


def test_drafts_come_back_to_their_author(ctx):
    st = composed(ctx)
    st, _ = A.save_draft(ctx, "ann1", st)
    ref = st.picked_ref
    st2, _ = A.next_item(ctx, "ann1", st)
    assert st2.ref_id != ref  # next moves on ...
    other, _ = start(ctx, "ann2")
    assert other.ref_id != ref  # ... the draft is not offered to others ...
    fresh_session, view = A.next_item(ctx, "ann1", None)
    assert fresh_session.ref_id == ref and fresh_session.sample_id == st.sample_id  # ... and resumes first
    assert fresh_session.prompt["prompt"] == st.prompt["prompt"]
    assert "draft, resumed" in view["message"]


def test_queue_empty(make_ctx):
    ctx = make_ctx()
    ctx.queue.ref_ids = ctx.queue.ref_ids[:1]
    st, _ = start(ctx, "ann1")
    st2, view = A.next_item(ctx, "ann2", None)
    assert st2.ref_id is None and "queue is empty" in view["message"]
    assert view["image"] is None


def test_every_action_needs_a_signed_in_user_with_a_role(ctx):
    st, _ = start(ctx)
    with pytest.raises(NotSignedIn):
        A.next_item(ctx, None, None)
    with pytest.raises(AccessDenied, match="unknown user"):
        A.pick_object(ctx, "mallory", st, st.ann_id)
    ctx.store.add_user("bot", "annotator", None)  # accounts exist for roles; a passwordless one still works here
    A.next_item(ctx, "bot", None)


def test_llm_rephrasings_through_a_local_endpoint(make_ctx, tmp_path, monkeypatch):
    """The app's rephrase action with the real OpenAI client against a scripted local server."""
    from refcoco_edit.text.llm import LLMError, LLMSettings
    from tests.refcoco_edit import llm_server as srv

    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    server = srv.ScriptedServer().start()
    try:
        ctx = make_ctx(llm=LLMSettings(model="test-model", base_url=server.base_url, cache_dir=tmp_path / "llm",
                                       max_attempts=1, timeout=5.0))

        def answer(req, user):
            ref = user["referring_part"]
            return {"rephrasings": [{"prompt": f"please make {ref} red", "referring": ref,
                                     "edit": ["please make", "red"]},
                                    {"prompt": f"turn {ref} blue", "referring": ref, "edit": ["turn", "blue"]}]}

        server.script = [srv.dynamic(answer), srv.status(500)]
        st = composed(ctx, edit_type="attribute", target="red")
        st2, view = A.rephrase(ctx, "ann1", st, 2)
        # the second one changed the target (blue): the checks refuse it
        assert [r["prompt"] for r in st2.rephrasings] == [f"please make {st.prompt['referring_text']} red"]
        assert st2.rephrasings[0]["source"] == "llm" and "refused by the checks" in view["message"]
        st3, _ = A.accept_rephrasing(ctx, "ann1", st2, 0)
        assert st3.prompt["prompt"].startswith("please make ") and st3.prompt["reviewed"] is True
        with pytest.raises(LLMError):
            A.rephrase(ctx, "ann1", st3, 2)  # the endpoint fails: refused, the prompt is kept
        assert server.requests and server.requests[0]["body"]["model"] == "test-model"
    finally:
        server.stop()


def test_pipeline_labels_come_from_the_pipeline_classes(ctx):
    from annotation_app.context import PIPELINE_LABELS
    from refcoco_edit.pipelines import pipeline_class

    assert ctx.pipeline_names() == list(PIPELINE_LABELS)
    assert PIPELINE_LABELS["classical_inpaint"] == "removal (OpenCV, no model)"
    assert all(PIPELINE_LABELS[n] == pipeline_class(n).label for n in PIPELINE_LABELS)
