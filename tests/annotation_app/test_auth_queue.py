"""Sign-in against the store, role checks, the work queue and the pieces of the picture."""

from __future__ import annotations

import numpy as np
import pytest

from annotation_app.auth import ANNOTATE, REVIEW, StoreAuth, require_role
from annotation_app.errors import AccessDenied, NotSignedIn
from annotation_app.queue import WorkQueue
from annotation_app.render import ObjectMask, highlight, mask_from_editor, object_at, outline, outline_objects
from tests.annotation_app.conftest import PASSWORDS


def test_sign_in_and_lockout(ctx):
    now = [0.0]
    auth = StoreAuth(ctx.store, max_failures=3, window_s=60, clock=lambda: now[0])
    assert auth("ann1", PASSWORDS["ann1"]) is True
    assert auth("ann1", "wrong") is False
    assert auth("nobody", "x") is False
    assert auth("", "") is False
    auth("ann1", "wrong")
    auth("ann1", "wrong")
    assert auth("ann1", PASSWORDS["ann1"]) is False  # locked out, even with the right password
    assert auth("ann2", PASSWORDS["ann2"]) is True  # only that name
    now[0] = 61.0
    assert auth("ann1", PASSWORDS["ann1"]) is True


def test_roles_come_from_the_store(ctx):
    assert require_role(ctx.store, "rev1", REVIEW, "review").role == "reviewer"
    with pytest.raises(AccessDenied, match="ann1 is an annotator; only reviewers or admins may review"):
        require_role(ctx.store, "ann1", REVIEW, "review")
    with pytest.raises(NotSignedIn):
        require_role(ctx.store, "", ANNOTATE, "annotate")
    with pytest.raises(AccessDenied, match="unknown user"):
        require_role(ctx.store, "ghost", ANNOTATE, "annotate")


def test_queue_order_claims_and_expiry(ctx):
    now = [1000.0]
    q = WorkQueue(ctx.store, [5, 6, 7], ttl_s=100, clock=lambda: now[0])
    assert q.next_for("a") == 5
    assert q.next_for("b") == 6
    assert q.next_for("a", skip=[5]) == 7  # a still holds 5, but skipped it
    assert q.holder(6) == "b" and not q.claim(6, "a")
    assert q.open_count("c") == 0
    now[0] += 101  # every claim expired
    assert q.holder(6) is None and q.next_for("c") == 5
    assert q.release(5, "c") and not q.release(5, "c")
    assert q.claims_of("c") == []


def test_queue_refreshes_from_the_store(ctx):
    """Samples written by others (a CLI build) reach the queue after `refresh_s`."""
    from annotation_app.queue import SampleInfo

    q = WorkQueue(ctx.store, [0, 1], refresh_s=0.0)
    q.note(SampleInfo("x", 0, "candidate", "someone"))
    assert q.done_for(0, "a") is None  # the next read replaced the index with the store's (empty) view
    q2 = WorkQueue(ctx.store, [0, 1], refresh_s=3600)
    q2.refresh()
    q2.note(SampleInfo("x", 0, "candidate", "someone"))
    assert q2.done_for(0, "a").sample_id == "x" and q2.next_for("a") == 1


def test_object_at_prefers_the_smaller_of_overlapping_objects():
    big = np.zeros((10, 10), np.uint8)
    big[1:9, 1:9] = 1
    small = np.zeros((10, 10), np.uint8)
    small[4:6, 4:6] = 1
    objs = [ObjectMask(1, big, 10), ObjectMask(2, small, None)]
    assert object_at(objs, 4, 4).ann_id == 2
    assert object_at(objs, 2, 2).ann_id == 1
    assert object_at(objs, 0, 0) is None and object_at(objs, 50, 50) is None


def test_outline_and_overlays():
    m = np.zeros((7, 7), np.uint8)
    m[1:6, 1:6] = 1
    edge = outline(m)
    assert edge.sum() == 16 and not edge[3, 3] and edge[1, 1]
    from PIL import Image

    img = Image.new("RGB", (7, 7), (0, 0, 0))
    out = np.asarray(outline_objects(img, [ObjectMask(1, m, 3)], picked=None))
    assert (out[edge] != 0).any(axis=1).all() and (out[~edge] == 0).all()


def test_highlight_pieces():
    pieces = highlight("replace the cup with a vase", [[8, 15]], [[0, 7], [16, 27]])
    assert pieces == [("replace", "P_e"), (" ", None), ("the cup", "P_r"), (" ", None), ("with a vase", "P_e")]


def test_mask_from_editor_scales_and_unions_layers():
    from PIL import Image

    a = np.zeros((4, 4, 4), np.uint8)
    a[0, 0, 3] = 255
    b = np.zeros((4, 4, 4), np.uint8)
    b[3, 3, 3] = 1
    m = mask_from_editor({"layers": [Image.fromarray(a, "RGBA"), Image.fromarray(b, "RGBA")]}, (8, 8))
    assert m.shape == (8, 8) and m[:2, :2].all() and m[6:, 6:].all() and m.sum() == 8
    assert mask_from_editor({"layers": []}, (8, 8)) is None and mask_from_editor(None, (8, 8)) is None


def test_open_count_matches_a_direct_count(ctx):
    """The set-based count equals visiting every ref (the definition)."""
    from annotation_app.queue import SampleInfo

    q = WorkQueue(ctx.store, list(range(20)), refresh_s=3600)
    q.refresh()
    q.note(SampleInfo("s1", 3, "candidate", "a"))
    q.note(SampleInfo("s2", 4, "draft", "a"))
    q.note(SampleInfo("s3", 5, "draft", "b"))
    q.note(SampleInfo("s4", 99, "accepted", "b"))  # not a queue ref
    q.claim(6, "b")
    q.claim(7, "a")
    for user in ("a", "b", "c"):
        held = {a.ref_key: a.user for a in ctx.store.assignments()}
        direct = sum(1 for r in q.ref_ids
                     if q.done_for(r, user) is None and held.get(f"ref:{r}", user) == user)
        assert q.open_count(user) == direct
    assert q.open_count("a") == 20 - 3  # 3 (submitted), 5 (b's draft), 6 (held by b)
