"""The reviewer's actions and their refusals; the progress page built from what they did."""

from __future__ import annotations

import numpy as np
import pytest

from annotation_app.errors import AccessDenied, StateError
from annotation_app.handlers import annotate as A
from annotation_app.handlers import progress as P
from annotation_app.handlers import review as R
from refcoco_edit.store import ConflictError


def submitted(ctx, user="ann1", edit_type="remove"):
    st, _ = A.next_item(ctx, user, None)
    st, _ = A.compose_prompt(ctx, user, st, 0, edit_type, "" if edit_type == "remove" else "blue")
    st, _ = A.generate(ctx, user, st, "classical_inpaint", 1, 0, None, "")
    st, _ = A.pick_candidate(ctx, user, st, 0)
    st, _ = A.submit(ctx, user, st)
    return st


def test_annotators_cannot_review(ctx):
    st = submitted(ctx)
    forged = R.ReviewState(st.sample_id, ctx.store.get_sample(st.sample_id, images=False).version, None)
    for call in (lambda: R.next_review(ctx, "ann2", None), lambda: R.accept(ctx, "ann2", forged),
                 lambda: R.reject(ctx, "ann2", forged, "bad"), lambda: R.send_back(ctx, "ann2", forged, "redo"),
                 lambda: R.load_review(ctx, "ann2", None, st.sample_id), lambda: R.sample_table(ctx, "ann2")):
        with pytest.raises(AccessDenied, match="only reviewers or admins"):
            call()
    assert ctx.store.get_sample(st.sample_id, images=False).sample.status == "candidate"
    assert ctx.store.get_reviews(st.sample_id) == []


def test_accept(ctx):
    st = submitted(ctx)
    rs, view = R.next_review(ctx, "rev1", None)
    assert rs.sample_id == st.sample_id and rs.claimed == f"review:{st.sample_id}"
    assert "ann1" in view["info"] and "classical_inpaint" in view["info"]
    s = ctx.store.get_sample(st.sample_id).sample
    assert np.array_equal(np.asarray(view["source_mask"]) > 0, s.source_mask.astype(bool))
    assert np.array_equal(np.asarray(view["edit_mask"]) > 0, s.edit_mask.astype(bool))
    assert view["result"].size == s.edited_image.size
    assert "".join(t for t, _ in view["prompt"]) == s.prompt
    rs, view = R.accept(ctx, "rev1", rs)
    s = ctx.store.get_sample(st.sample_id, images=False).sample
    assert (s.status, s.reviewer) == ("accepted", "rev1")
    assert [(r.reviewer, r.decision) for r in ctx.store.get_reviews(st.sample_id)] == [("rev1", "accept")]
    assert ctx.store.assignments("rev1") == []
    assert "accepted" in view["message"]
    with pytest.raises(StateError, match="not waiting for review"):
        R.accept(ctx, "rev1", rs)


def test_reject_needs_a_reason_and_send_back_a_comment(ctx):
    st = submitted(ctx)
    rs, _ = R.next_review(ctx, "rev1", None)
    with pytest.raises(StateError, match="reason"):
        R.reject(ctx, "rev1", rs, "  ")
    with pytest.raises(StateError, match="should change"):
        R.send_back(ctx, "rev1", rs, "")
    with pytest.raises(StateError, match="unknown decision"):
        R.decide(ctx, "rev1", rs, "maybe")
    rs2, _ = R.send_back(ctx, "rev1", rs, "the removal left a shadow")
    s = ctx.store.get_sample(st.sample_id, images=False).sample
    assert s.status == "draft" and s.reviewer == "rev1"
    # the annotator gets the draft back first, with the comment
    back, view = A.next_item(ctx, "ann1", None)
    assert back.sample_id == st.sample_id
    assert "the removal left a shadow" in view["item"]
    back, _ = A.submit(ctx, "ann1", back)
    rs3, _ = R.next_review(ctx, "rev1", None)
    rs3, _ = R.reject(ctx, "rev1", rs3, "still a shadow")
    assert ctx.store.get_sample(st.sample_id, images=False).sample.status == "rejected"
    assert [r.decision for r in ctx.store.get_reviews(st.sample_id)] == ["send_back", "reject"]


def test_no_one_reviews_their_own_sample(ctx):
    st = submitted(ctx, user="rev1")  # reviewers may annotate too
    rs, view = R.next_review(ctx, "rev1", None)
    assert rs.sample_id is None and "Nothing to review" in view["message"]
    rs, _ = R.load_review(ctx, "rev1", None, st.sample_id)
    assert rs.claimed is None  # looking at one's own sample does not hold it
    with pytest.raises(AccessDenied, match="another reviewer"):
        R.accept(ctx, "rev1", rs)
    rs, _ = R.next_review(ctx, "boss", None)  # an admin may review it
    assert rs.sample_id == st.sample_id
    R.accept(ctx, "boss", rs)


def test_two_reviewers_get_different_samples_and_conflicts_are_refused(ctx):
    a = submitted(ctx, "ann1")
    b = submitted(ctx, "ann2")
    r1, _ = R.next_review(ctx, "rev1", None)
    r2, _ = R.next_review(ctx, "boss", None)
    assert {r1.sample_id, r2.sample_id} == {a.sample_id, b.sample_id}
    # boss opens rev1's sample from the table: it is not claimed for boss, and boss may not decide on it
    peek, _ = R.load_review(ctx, "boss", r2, r1.sample_id)
    assert peek.claimed is None
    with pytest.raises(StateError, match="being reviewed by rev1"):
        R.accept(ctx, "boss", peek)
    # the sample changes while rev1 looks at it: the decision is refused
    rec = ctx.store.get_sample(r1.sample_id, images=False)
    ctx.store.update_sample(r1.sample_id, {"generation": {**rec.sample.generation, "note": "x"}},
                            expected_version=rec.version, user="boss")
    with pytest.raises(ConflictError):
        R.accept(ctx, "rev1", r1)


def test_sample_table_shows_who_made_what(ctx):
    a = submitted(ctx, "ann1")
    b = submitted(ctx, "ann2")
    rows = R.sample_table(ctx, "rev1")
    want = [(a.sample_id, "ann1", "submitted"), (b.sample_id, "ann2", "submitted")]  # not the store's word
    assert [(r[0], r[2], r[3]) for r in rows] == want
    assert [r[0] for r in R.sample_table(ctx, "rev1", annotator="ann2")] == [b.sample_id]


def test_progress_counts_and_throughput(ctx):
    submitted(ctx, "ann1")
    submitted(ctx, "ann1", edit_type="attribute")
    submitted(ctx, "ann2")
    rs, _ = R.next_review(ctx, "rev1", None)
    R.accept(ctx, "rev1", rs)
    rs, _ = R.next_review(ctx, "rev1", None)
    R.reject(ctx, "rev1", rs, "no")
    report = P.progress_report(ctx, "ann2")
    stats = report["stats"]
    assert stats["by_status"] == {"accepted": 1, "candidate": 1, "rejected": 1}
    assert stats["by_annotator"] == {"ann1": 2, "ann2": 1}
    assert stats["by_pipeline"] == {"classical_inpaint": 3}
    assert stats["by_edit_type"] == {"attribute": 1, "remove": 2}
    cols = report["throughput_columns"]
    rows = {r[0]: dict(zip(cols, r)) for r in report["throughput"]}
    assert rows["ann1"]["made"] == 2 and rows["ann1"]["submitted"] == 2
    assert rows["ann2"]["submitted"] == 1
    assert rows["ann1"]["accepted"] + rows["ann1"]["rejected"] == 2  # the first two reviews were ann1's
    assert rows["rev1"]["reviewed"] == 2
    assert "#### By status" in report["summary"] and "| accepted | 1 |" in report["summary"]
    with pytest.raises(AccessDenied):
        P.progress_report(ctx, "nobody")


def test_active_time_skips_idle_gaps():
    # gaps 60, 120, 3600 (idle), 30 -> 210 s active
    assert P.active_seconds([0, 60, 180, 3780, 3810]) == 210
    assert P.active_seconds([5]) == 0
    assert P.active_seconds([10, 0, 20]) == 20
