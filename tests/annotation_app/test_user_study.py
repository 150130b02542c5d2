"""The user study: items from a manifest, hidden shuffled methods, the paper's two questions (and the
optional third), checked ratings, old stores migrated, means with intervals; the page's handlers as
Gradio calls them, and the admin-only export over HTTP."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from annotation_app.errors import AccessDenied, StateError
from annotation_app.handlers import user_study as U
from annotation_app.user_study import StudyStore, cluster_bootstrap_ci, shown_order
from refcoco_edit.errors import DataError, InputError

METHODS = ["ip2p", "magicbrush", "referdiffusion"]


def write_manifest(folder, n_items=3, methods=METHODS):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_items):
        Image.new("RGB", (16, 12), (i, 0, 0)).save(folder / f"src{i}.png")
        outs = {}
        for k, m in enumerate(methods):
            Image.new("RGB", (16, 12), (i, 10 * (k + 1), 0)).save(folder / f"{m}{i}.png")
            outs[m] = f"{m}{i}.png"
        lines.append(json.dumps({"item_id": f"item{i}", "source": f"src{i}.png", "prompt": "make the left cup red",
                                 "referring_spans": [[5, 17]], "edit_spans": [[0, 4], [18, 21]], "outputs": outs}))
    (folder / "study.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "study.jsonl"


def reference_bootstrap(groups, resamples, seed, confidence=0.95):
    """An independent, loop-based cluster bootstrap with the same random draws."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(groups), size=(resamples, len(groups)))
    means = []
    for row in picks:
        values = [v for i in row for v in groups[i]]
        means.append(sum(values) / len(values))
    a = (1 - confidence) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def test_bootstrap_matches_a_reference_and_covers_the_mean():
    rnd = random.Random(3)
    groups = [[rnd.randint(1, 5) for _ in range(rnd.randint(1, 4))] for _ in range(12)]
    mean, low, high = cluster_bootstrap_ci([np.array(g) for g in groups], resamples=500, seed=7)
    assert mean == pytest.approx(sum(map(sum, groups)) / sum(map(len, groups)))
    assert (low, high) == pytest.approx(reference_bootstrap(groups, 500, 7))
    assert low <= mean <= high
    # more items of the same spread: a narrower interval
    many = [np.array(g) for g in groups * 10]
    _, low2, high2 = cluster_bootstrap_ci(many, resamples=500, seed=7)
    assert high2 - low2 < high - low
    assert cluster_bootstrap_ci([np.array([4, 4])]) == (4.0, 4.0, 4.0)
    assert all(np.isnan(v) for v in cluster_bootstrap_ci([]))


def test_manifest_import_and_checks(tmp_path):
    study = StudyStore(tmp_path / "s.study.sqlite")
    try:
        assert study.import_manifest(write_manifest(tmp_path / "m")) == 3
        assert study.item_ids() == ["item0", "item1", "item2"]
        assert study.methods("item1") == sorted(METHODS)
        with pytest.raises(InputError, match="already stored"):
            study.import_manifest(tmp_path / "m" / "study.jsonl")
        (tmp_path / "bad.jsonl").write_text('{"item_id": "x"}\n')
        with pytest.raises(DataError, match="expected item_id"):
            study.import_manifest(tmp_path / "bad.jsonl")
        from PIL import Image

        with pytest.raises(InputError, match="2 to 8"):
            study.add_item("one", Image.new("RGB", (2, 2)), "p", {"only": Image.new("RGB", (2, 2))})
    finally:
        study.close()


def test_order_is_shuffled_per_rater_and_stable():
    orders = {tuple(shown_order(METHODS, f"r{i}", "item0")) for i in range(30)}
    assert len(orders) > 1 and all(sorted(o) == sorted(METHODS) for o in orders)
    assert shown_order(METHODS, "r1", "item0") == shown_order(list(reversed(METHODS)), "r1", "item0")


def test_rating_flow_and_export(ctx, tmp_path):
    ctx.study.import_manifest(write_manifest(tmp_path / "m"))
    # every rater rates every item; the score a method gets is fixed per method, so means are known
    want = {"ip2p": (2, 3), "magicbrush": (3, 3), "referdiffusion": (5, 4)}  # (quality, prompt consistency)
    for rater in ("ann1", "ann2", "rev1"):
        st, view = U.study_next(ctx, rater, None)
        seen = 0
        while st.item_id is not None:
            assert view["slots"] == 3 and view["outputs"][3] is None
            assert "".join(t for t, _ in view["prompt"]) == "make the left cup red"
            assert [lab for _, lab in view["prompt"]] == ["P_e", None, "P_r", None, "P_e"]
            # slots show the methods' images in the session's (shuffled) order
            for i, m in enumerate(st.methods):
                expected = 10 * (METHODS.index(m) + 1)
                assert np.asarray(view["outputs"][i])[0, 0, 1] == expected
            scores = [want[m] for m in st.methods]
            st, view = U.study_rate(ctx, rater, st, scores)
            seen += 1
        assert seen == 3 and "rated every item" in view["message"]
    out = U.study_export(ctx, "boss")
    rows = {r[0]: dict(zip(out["columns"], r)) for r in out["rows"]}
    for m, (q, c) in want.items():
        assert rows[m]["quality_mean"] == q and rows[m]["prompt_consistency_mean"] == c
        assert rows[m]["quality_low"] == q == rows[m]["quality_high"]  # no spread, no width
        assert rows[m]["ratings"] == 9 and rows[m]["items"] == 3 and rows[m]["raters"] == 3
        assert rows[m]["quality_ratings"] == rows[m]["prompt_consistency_ratings"] == 9
        # the third question is not asked by default: no scores, an empty cell
        assert rows[m]["preservation_ratings"] == 0 and rows[m]["preservation_mean"] is None
    lines = out["csv"].splitlines()
    assert lines[0] == ("method,ratings,items,raters,quality_mean,quality_low,quality_high,quality_ratings,"
                        "prompt_consistency_mean,prompt_consistency_low,prompt_consistency_high,"
                        "prompt_consistency_ratings,preservation_mean,preservation_low,preservation_high,"
                        "preservation_ratings")
    assert len(lines) == 4 and lines[3] == "referdiffusion,9,3,3,5.0000,5.0000,5.0000,9,4.0000,4.0000,4.0000,9,,,,0"
    stored = ctx.study.ratings()
    assert {(r["quality"], r["prompt_consistency"], r["preservation"]) for r in stored} == {
        (q, c, None) for q, c in want.values()}


def test_rating_refusals(ctx, tmp_path):
    ctx.study.import_manifest(write_manifest(tmp_path / "m", n_items=1))
    st, _ = U.study_next(ctx, "ann1", None)
    with pytest.raises(StateError, match="score every output for image quality and consistency with the prompt"):
        U.study_rate(ctx, "ann1", st, [(1, 2), (3, None), (4, 4)])
    with pytest.raises(StateError, match="score every output"):
        U.study_rate(ctx, "ann1", st, [(1, 2)])
    with pytest.raises(InputError, match="1-5"):
        U.study_rate(ctx, "ann1", st, [(1, 2), (6, 2), (4, 4)])
    with pytest.raises(InputError, match="whole numbers"):
        U.study_rate(ctx, "ann1", st, [(1, 2), (2.5, 2), (4, 4)])
    with pytest.raises(StateError, match="no item"):
        U.study_rate(ctx, "ann1", U.StudyState(), [])
    U.study_rate(ctx, "ann1", st, [(1, 2), (3, 3), (4, 4)])
    with pytest.raises(InputError, match="already rated"):
        U.study_rate(ctx, "ann1", st, [(1, 2), (3, 3), (4, 4)])
    with pytest.raises(AccessDenied, match="only admins"):
        U.study_export(ctx, "rev1")
    with pytest.raises(AccessDenied):
        U.study_next(ctx, None, None)


def test_empty_study(ctx):
    st, view = U.study_next(ctx, "ann1", None)
    assert st.item_id is None and "No study items" in view["message"]


def test_third_question_is_asked_when_the_option_is_on(ctx, tmp_path):
    study = ctx.study
    assert study.options() == {"preservation": False}
    assert [q.key for q in study.questions()] == ["quality", "prompt_consistency"]
    manifest = write_manifest(tmp_path / "m", n_items=2)
    # an options line in the manifest turns the third question on
    manifest.write_text('{"options": {"preservation": true}}\n' + manifest.read_text())
    assert study.import_manifest(manifest) == 2
    assert study.options() == {"preservation": True}
    assert [q.key for q in study.questions()] == ["quality", "prompt_consistency", "preservation"]
    st, view = U.study_next(ctx, "ann1", None)
    assert "image quality, consistency with the prompt and rest unchanged" in view["message"]
    with pytest.raises(StateError, match="score every output for image quality"):
        U.study_rate(ctx, "ann1", st, [(1, 2), (3, 3), (4, 4)])  # the third score is missing
    st, _ = U.study_rate(ctx, "ann1", st, [(1, 2, 3), (3, 3, 3), (4, 4, 5)])
    rows = study.ratings()
    assert sorted((r["quality"], r["prompt_consistency"], r["preservation"]) for r in rows) == [
        (1, 2, 3), (3, 3, 3), (4, 4, 5)]
    # the store checks what it is given, whoever calls it
    item = st.item_id
    with pytest.raises(InputError, match="expected 3 scores"):
        study.rate("ann2", item, {m: (1, 1) for m in METHODS})
    with pytest.raises(InputError, match="missing the score for preservation"):
        study.rate("ann2", item, {m: {"quality": 1, "prompt_consistency": 1} for m in METHODS})
    with pytest.raises(InputError, match="whole numbers"):
        study.rate("ann2", item, {m: {"quality": True, "prompt_consistency": 1, "preservation": 1} for m in METHODS})
    # turned off again: the third question is refused, not silently dropped, at the store
    study.set_options(preservation=False)
    with pytest.raises(InputError, match="does not ask preservation"):
        study.rate("ann2", item, {m: {"quality": 1, "prompt_consistency": 1, "preservation": 1} for m in METHODS})
    with pytest.raises(InputError, match="unknown study option"):
        study.set_options(consistency=True)
    with pytest.raises(InputError, match="true or false"):
        study.set_options(preservation="yes")


OLD_SCHEMA = """
CREATE TABLE items (
    item_id TEXT PRIMARY KEY, source TEXT NOT NULL, prompt TEXT NOT NULL,
    referring_spans TEXT NOT NULL DEFAULT '[]', edit_spans TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL);
CREATE TABLE outputs (
    item_id TEXT NOT NULL REFERENCES items(item_id), method TEXT NOT NULL, image TEXT NOT NULL,
    PRIMARY KEY (item_id, method));
CREATE TABLE ratings (
    rater TEXT NOT NULL, item_id TEXT NOT NULL, method TEXT NOT NULL, position INTEGER NOT NULL,
    quality INTEGER NOT NULL CHECK (quality BETWEEN 1 AND 5),
    consistency INTEGER NOT NULL CHECK (consistency BETWEEN 1 AND 5),
    created_at TEXT NOT NULL,
    PRIMARY KEY (rater, item_id, method),
    FOREIGN KEY (item_id, method) REFERENCES outputs(item_id, method));
"""


def old_store(path, ratings):
    """A study store as written before the questions were named: `consistency` = rest unchanged."""
    import sqlite3

    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.execute("INSERT INTO items VALUES ('i1', 'h', 'make the cup red', '[]', '[]', 't')")
    conn.executemany("INSERT INTO outputs VALUES ('i1', ?, 'h')", [(m,) for m in METHODS])
    conn.executemany("INSERT INTO ratings VALUES (?, 'i1', ?, ?, ?, ?, 't')", ratings)
    conn.commit()
    conn.close()


def test_old_consistency_scores_become_preservation(tmp_path):
    import sqlite3

    old = [("r1", m, k, 2 + k, 5 - k) for k, m in enumerate(METHODS)]
    old_store(tmp_path / "old.study.sqlite", old)
    study = StudyStore(tmp_path / "old.study.sqlite")
    try:
        rows = {r["method"]: r for r in study.ratings()}
        for _rater, m, _pos, q, c in old:
            assert (rows[m]["quality"], rows[m]["prompt_consistency"], rows[m]["preservation"]) == (q, None, c)
        # the study went on asking about the rest, so it still does, beside the new prompt question
        assert study.options() == {"preservation": True}
        out = {s.method: s for s in study.summary(resamples=50)}
        assert out["ip2p"].preservation_mean == 5 and out["ip2p"].preservation_ratings == 1
        assert out["ip2p"].prompt_consistency_ratings == 0 and np.isnan(out["ip2p"].prompt_consistency_mean)
        assert out["ip2p"].quality_mean == 2
        study.rate("r2", "i1", {m: (4, 3, 2) for m in METHODS})
        out = {s.method: s for s in study.summary(resamples=50)}
        assert out["ip2p"].prompt_consistency_mean == 3 and out["ip2p"].preservation_mean == 3.5
    finally:
        study.close()
    with sqlite3.connect(tmp_path / "old.study.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    StudyStore(tmp_path / "old.study.sqlite").close()  # opening again changes nothing
    # a ratings table that is neither old nor new is refused, not guessed at
    with sqlite3.connect(tmp_path / "odd.study.sqlite") as conn:
        conn.execute("CREATE TABLE ratings (rater TEXT, item_id TEXT, method TEXT, quality INTEGER, score INTEGER)")
    with pytest.raises(DataError, match="not the study's questions"):
        StudyStore(tmp_path / "odd.study.sqlite")
    # an old store without ratings keeps the default: the paper's two questions
    old_store(tmp_path / "empty.study.sqlite", [])
    study = StudyStore(tmp_path / "empty.study.sqlite")
    try:
        assert study.options() == {"preservation": False} and study.ratings() == []
    finally:
        study.close()


# ---------------------------------------------------------------- the page, as Gradio calls it
def page_events(ctx):
    """The User study tab in a Blocks of its own; its events by API name."""
    import gradio as gr

    from annotation_app.tabs import user_study as T

    with gr.Blocks() as demo:
        T.build(ctx)
    return demo, {f.api_name: f for f in demo.fns.values()}


def test_submit_ratings_through_gradio(ctx, tmp_path, monkeypatch):
    """Gradio's own call path (special arguments, pre- and postprocessing) with a gr.Request, as a
    page's "Submit ratings" makes it; a refusal leaves every output as it was and says why on the
    message line (an API client gets it as its error)."""
    import asyncio

    import gradio as gr
    from gradio.state_holder import SessionState

    from annotation_app.user_study import MAX_METHODS

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    ctx.study.import_manifest(write_manifest(tmp_path / "m", n_items=2))
    demo, events = page_events(ctx)
    state = SessionState(demo)
    page = gr.Request(username="ann1", session_hash="s1", headers={})
    api = gr.Request(username="ann1", session_hash="s1", headers={"x-gradio-user": "api"})

    def run(name, inputs, request=page):
        return asyncio.run(demo.process_api(events[name], inputs, state=state, request=request,
                                            session_hash="s1"))["data"]

    def refused(out, message_at: int, state_at: int | None = 0) -> str:
        """The message of a refusal on the page; every other output must be left as it was (the
        session's state stays on the server, which sends None for it; the rating after a refusal
        shows it kept)."""
        kept = [i for i, o in enumerate(out) if i not in (message_at, state_at) and o != {"__type__": "update"}]
        assert kept == [], f"outputs {kept} changed by a refusal"
        assert out[message_at].startswith("**Refused:** ")
        return out[message_at]

    # Submit before any item is on screen
    assert "no item on screen: press Next" in refused(run("study_rate", [None] * (1 + 3 * MAX_METHODS)), 4)
    out = run("study_next", [None])
    assert "0 of 2 item(s) rated" in out[3]
    shown = ctx.study.item(ctx.study.next_item_id("ann1"), "ann1")
    # radios: quality of slots 0..7, then prompt consistency, then preservation (hidden, not asked)
    quality = [1, 2, 3] + [None] * (MAX_METHODS - 3)
    prompt = [5, 4, 3] + [None] * (MAX_METHODS - 3)
    # a question left unanswered for one output: refused, nothing stored
    partial = [5, None, 3] + [None] * (MAX_METHODS - 3)
    assert refused(run("study_rate", [None, *quality, *partial, *[None] * MAX_METHODS]), 4) == (
        "**Refused:** score every output for image quality and consistency with the prompt before submitting")
    assert ctx.study.ratings() == []
    with pytest.raises(gr.Error, match="score every output"):
        run("study_rate", [None, *quality, *partial, *[None] * MAX_METHODS], request=api)
    out = run("study_rate", [None, *quality, *prompt, *[None] * MAX_METHODS])
    assert f"Saved your ratings of item {shown.item_id}" in out[4] and "1 of 2 item(s) rated" in out[3]
    got = {r["method"]: (r["quality"], r["prompt_consistency"]) for r in ctx.study.ratings()}
    assert got == {o.method: (quality[i], prompt[i]) for i, o in enumerate(shown.outputs)}
    # the export: refused to an annotator on the page (where it is not shown) and at the API
    assert "only admins may export the user study" in refused(run("study_export", []), 2, None)
    with pytest.raises(gr.Error, match="only admins"):
        run("study_export", [], request=api)

    # the study asks the third question from now on (an admin added an options line): the item on
    # screen must be shown again, and Next shows the question's radios
    ctx.study.set_options(preservation=True)
    assert "questions have changed" in refused(run("study_rate", [None, *quality, *prompt, *[None] * MAX_METHODS]), 4)
    out = run("study_next", [None])
    first_preservation = 5 + 2 * MAX_METHODS + 2 * MAX_METHODS
    assert [u.get("visible") for u in out[first_preservation:first_preservation + MAX_METHODS]] == [True] * MAX_METHODS
    assert "and rest unchanged" in out[4]
    preservation = [2, 2, 2] + [None] * (MAX_METHODS - 3)
    out = run("study_rate", [None, *quality, *prompt, *preservation])
    assert "Saved your ratings" in out[4] and "2 of 2 item(s) rated" in out[3]
    assert [r["preservation"] for r in ctx.study.ratings()].count(2) == 3 == len(ctx.study.ratings()) - 3


def test_the_export_section_is_shown_to_admins_only(ctx):
    import gradio as gr

    from annotation_app.tabs import user_study as T

    _, events = page_events(ctx)
    assert "study_export" in events  # the section is only hidden; the handler checks the role itself
    view = T.export_view(ctx)
    shown = {name: view(gr.Request(username=name, session_hash="s"))["visible"] for name in ("boss", "ann1", "rev1")}
    assert shown == {"boss": True, "ann1": False, "rev1": False}
    assert view(gr.Request(username=None, session_hash="s"))["visible"] is False


# ---------------------------------------------------------------- the running app, over HTTP
SERVED_USERS = {"boss": ("admin", "boss-password"), "ann1": ("annotator", "ann1-password"),
                "ann2": ("annotator", "ann2-password")}


@pytest.fixture(scope="module")
def served(tmp_path_factory, refshapes, verdicts):
    """The app on a free loopback port with an admin and two annotators; (url, ctx, Gradio's folder)."""
    from tests.annotation_app.conftest import pipeline_factory, serve_app

    path = tmp_path_factory.mktemp("study-http") / "store.sqlite"
    with serve_app(path, SERVED_USERS, data=refshapes, verdicts=verdicts, pipeline_factory=pipeline_factory) as (
            url, ctx, cache, _):
        yield url + "/", ctx, cache


def signed_in(url: str, user: str):
    """An HTTP client holding `user`'s session cookie."""
    import httpx

    http = httpx.Client(base_url=url, timeout=30)
    r = http.post("login", data={"username": user, "password": SERVED_USERS[user][1]})
    assert r.status_code == 200 and r.json().get("success"), r.text
    return http


def file_refs(value) -> list[str]:
    """Every file path or URL a Gradio response names."""
    if isinstance(value, dict):
        own = [str(value[k]) for k in ("path", "url") if value.get(k)]
        return own + [f for v in value.values() for f in file_refs(v)]
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in file_refs(v)]
    return []


@pytest.mark.filterwarnings("ignore:.*deprecated.*")
def test_export_goes_to_the_admin_only(served, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, ctx, gradio_folder = served
    from annotation_app.user_study import MAX_METHODS

    ctx.study.import_manifest(write_manifest(tmp_path / "m", n_items=2))
    boss = Client(url, auth=("boss", SERVED_USERS["boss"][1]), verbose=False, download_files=False)
    ann1 = Client(url, auth=("ann1", SERVED_USERS["ann1"][1]), verbose=False, download_files=False)
    # an annotator rates both items over HTTP, through the page's own events (the client leaves the
    # session's state out: [source, prompt, progress, message, ...])
    for n in range(2):
        out = ann1.predict(api_name="/study_next")
        assert f"{n} of 2 item(s) rated" in out[2]
        rest = [None] * (MAX_METHODS - 3)
        out = ann1.predict(*[4, 4, 4], *rest, *[2, 2, 2], *rest, *[None] * MAX_METHODS, api_name="/study_rate")
        assert "Saved your ratings" in out[3]
    assert "rated every item" in out[3]
    assert {(r["rater"], r["quality"], r["prompt_consistency"]) for r in ctx.study.ratings()} == {("ann1", 4, 2)}
    table, csv_text, message = boss.predict(api_name="/study_export")
    assert message == "Exported the means of 3 method(s); the CSV downloads."
    assert csv_text == ctx.study.export_csv() and csv_text.startswith("method,ratings,items,raters,quality_mean")
    assert [r[0] for r in table["data"]] == ["ip2p", "magicbrush", "referdiffusion"]
    # the export reached the admin in the response itself: it names no file, and no file the server
    # keeps holds it
    assert file_refs(table) == [] and file_refs(csv_text) == []
    body = csv_text.splitlines()[1].encode()
    holders = [p for p in gradio_folder.rglob("*") if p.is_file() and body in p.read_bytes()]
    assert holders == []

    # a second signed-in user, not an admin: refused at the API ...
    with pytest.raises(AppError, match="only admins may export the user study"):
        ann1.predict(api_name="/study_export")
    # ... and by URL there is nothing to fetch, though Gradio's file route does serve whatever lies in
    # its folder (where exports used to be written) to every signed-in user
    http = signed_in(url, "ann2")
    probe = gradio_folder / "study-exports" / "probe.csv"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("probe\n")
    assert http.get(f"gradio_api/file={probe}").text == "probe\n"
    exports = [p for p in gradio_folder.rglob("*.csv") if p != probe]
    assert exports == []
    for ref in file_refs(table):
        assert body.decode() not in http.get(f"gradio_api/file={ref}").text


def test_the_app_guards_its_upload_route(served):
    """`launch` puts `uploads.UploadGuard` in front of Gradio's upload route: only images are kept."""
    from tests.annotation_app.test_uploads import noise_png

    url, _, gradio_folder = served
    http = signed_in(url, "ann2")
    fake = b"GIF89a? no: plain text pretending to be a picture"
    r = http.post("gradio_api/upload", files=[("files", ("photo.png", fake, "image/png"))])
    assert r.status_code == 415 and "photo.png: not a readable image" in r.text
    assert [p for p in gradio_folder.rglob("*") if p.is_file() and p.read_bytes() == fake] == []
    r = http.post("gradio_api/upload", files=[("files", ("photo.png", noise_png(12, seed=0), "image/png"))])
    assert r.status_code == 200 and r.json()[0].endswith("photo.png")
