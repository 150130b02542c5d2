"""The running app through its HTTP API (no browser): sign-in, the tabs' wiring to the handlers, and
the server-side refusals a page could be bypassed for (wrong role, no sign-in, a bad upload)."""

from __future__ import annotations

import numpy as np
import pytest

# gradio's queue uses a pandas option that pandas 3 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*")

USERS = {"ann1": ("annotator", "ann1-password"), "rev1": ("reviewer", "rev1-password")}


@pytest.fixture(scope="module")
def app(tmp_path_factory, refshapes, verdicts):
    from tests.annotation_app.conftest import pipeline_factory, serve_app

    path = tmp_path_factory.mktemp("http") / "store.sqlite"
    with serve_app(path, USERS, data=refshapes, verdicts=verdicts, pipeline_factory=pipeline_factory) as (
            url, ctx, cache, _):
        yield url + "/", ctx, cache


def client(url: str, user: str):
    from gradio_client import Client

    return Client(url, auth=(user, USERS[user][1]), verbose=False, download_files=False)


def test_sign_in_is_required(app):
    import httpx

    url, _, _ = app
    r = httpx.post(url + "gradio_api/run/next_item", json={"data": [None], "session_hash": "x"})
    assert r.status_code in (401, 403)
    r = httpx.post(url + "login", data={"username": "ann1", "password": "wrong"})
    assert r.status_code == 400 or not r.json().get("success")


def test_annotate_and_review_over_http(app):
    url, ctx, cache = app
    ann = client(url, "ann1")
    out = ann.predict(api_name="/next_item")
    assert out[0].startswith("**Ref ")
    picture = out[1]["path"]
    assert picture.endswith(".png") and str(cache) in picture  # lossless, inside the store's folder
    out = ann.predict(1, "remove", "", api_name="/compose_prompt")
    pieces = [(p["token"], p["class_or_confidence"]) for p in out[0]]
    prompt = "".join(t for t, _ in pieces)
    assert {lab for _, lab in pieces} >= {"P_r", "P_e"} and out[-1] == f"Prompt: {prompt}"
    out = ann.predict("classical_inpaint", 2, "", 5, "", api_name="/generate")
    assert "2 candidate(s) from classical_inpaint" in out[-1]
    out = ann.predict(2, api_name="/pick_candidate")
    assert "Using candidate" in out[2]
    out = ann.predict(api_name="/submit")
    assert "Submitted sample" in out[-1]

    # the annotator cannot review, whatever the page shows
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="only reviewers or admins may review"):
        ann.predict(api_name="/review_next")
    with pytest.raises(AppError, match="only reviewers or admins may review"):
        ann.predict("", api_name="/accept")

    rev = client(url, "rev1")
    out = rev.predict(api_name="/review_next")
    assert "Made by **ann1**" in out[-1]
    out = rev.predict("", api_name="/accept")
    assert "accepted" in out[-1]
    recs = list(ctx.store.list_samples())
    assert len(recs) == 1
    s = recs[0].sample
    assert (s.status, s.annotator, s.reviewer, s.pipeline) == ("accepted", "ann1", "rev1", "classical_inpaint")
    cands = ctx.store.get_candidates(s.sample_id)
    inside = s.edit_mask.astype(bool)  # the store keeps the source outside M_e, the candidate inside
    assert cands[1].chosen and np.array_equal(np.asarray(s.edited_image)[inside], np.asarray(cands[1].image)[inside])


def test_bad_upload_is_refused_over_http(app, tmp_path):
    from gradio_client import handle_file

    url, ctx, _ = app
    ann = client(url, "ann1")
    ann.predict(api_name="/next_item")
    fake = tmp_path / "cat.png"
    fake.write_text("not a picture at all")
    # refused by the upload route itself (uploads.UploadGuard), before the handler sees it
    import httpx

    with pytest.raises(httpx.HTTPStatusError, match="415 Unsupported Media Type"):
        ann.predict(handle_file(str(fake)), api_name="/upload_example")
    from PIL import Image

    good = tmp_path / "cat2.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(good)
    out = ann.predict(handle_file(str(good)), api_name="/upload_example")
    assert "uploaded image 30x20" in out[-1]
    assert len(list(ctx.uploads.root.rglob("*.png"))) == 1
