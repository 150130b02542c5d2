"""A rater's whole user-study session in a real headless Chromium, at a laptop's 1366x768: sign in,
rate several items (every shown output on both questions) and submit, every main action on the
screen without scrolling; refusals (Submit before Next, a question left unanswered) leave the page as
it was with the reason on the message line; reload the page and find the progress kept; the export
section is not shown to the rater; then an admin exports the means, which arrive as a browser
download of the CSV.

Marked `browser` (skipped by the default run); Playwright and Chromium are found or installed as in
`test_browser.py`. Full-page screenshots of every step go to `test-artifacts/browser/user_study/`
(or under $REFCOCO_EDIT_TEST_ARTIFACTS).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from tests.annotation_app.test_browser import (
    TIMEOUT_MS,
    Steps,
    assert_in_view,
    assert_untouched,
    picture_sources,
    refused_in_view,
    wait_text,
)
from tests.annotation_app.test_user_study import METHODS, write_manifest

# gradio's queue uses a pandas option that pandas 3 deprecates; not ours to fix
pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:.*deprecated.*")]

USERS = {"rater1": ("annotator", "rater1-password"), "boss": ("admin", "boss-password")}
VIEWPORT = {"width": 1366, "height": 768}
N_ITEMS = 3
PICTURES = ["#study-source", *[f"#study-output-{i}" for i in range(len(METHODS))]]
# What must be on screen without scrolling while an item is rated.
STUDY_ACTIONS = ["#study-next", "#study-progress", "#study-message", "#study-submit", "#study-prompt", *PICTURES,
                 *[f"#study-{q}-{i}" for q in ("quality", "prompt-consistency") for i in range(len(METHODS))]]


@contextlib.contextmanager
def serving(folder: Path, refshapes, verdicts, manifest: Path, **options: bool):
    """The app on a free loopback port, on a fresh store in `folder` holding the study of `manifest`
    (with the study `options`, set before the page is built); (url, ctx)."""
    from tests.annotation_app.conftest import pipeline_factory, serve_app

    def prepare(ctx) -> None:
        if options:
            ctx.study.set_options(**options)
        ctx.study.import_manifest(manifest)

    with serve_app(folder / "store.sqlite", USERS, prepare=prepare, data=refshapes, verdicts=verdicts,
                   pipeline_factory=pipeline_factory) as (url, ctx, _, _):
        yield url, ctx


@pytest.fixture(scope="module")
def server(tmp_path_factory, refshapes, verdicts):
    """The app holding a study of three items, three methods each, on two questions."""
    folder = tmp_path_factory.mktemp("study-browser")
    with serving(folder, refshapes, verdicts, write_manifest(folder / "manifest", n_items=N_ITEMS)) as served:
        yield served


def sign_in(page, url: str, user: str) -> None:
    page.goto(url + "/logout")
    page.goto(url + "/")
    page.locator("input[type=text]").first.fill(user)
    page.locator("input[type=password]").fill(USERS[user][1])
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#tab-annotate", state="attached", timeout=TIMEOUT_MS)


def open_study(page) -> None:
    page.get_by_role("tab", name="User study").click()
    page.wait_for_selector("#study-next", state="visible")


def choose(page, elem_id: str, score: int) -> None:
    page.locator(f"#{elem_id} label").filter(has_text=str(score)).first.click()


def no_error_badges(page) -> None:
    """Gradio marks a failed event's outputs with "Error" badges; none may show."""
    assert page.locator(".error").count() == 0 and page.get_by_text("Error", exact=True).count() == 0


def checked(page, elem_id: str) -> list[str]:
    """The scores chosen in a question's radio (none, or one)."""
    return page.locator(f"#{elem_id} input:checked").evaluate_all("els => els.map(e => e.value)")


def export_shown(page) -> bool:
    section = page.locator("#study-export-section")
    return section.count() > 0 and section.first.is_visible()


def test_a_rater_session_in_chromium(chromium, server, tmp_path):
    url, ctx = server
    page = chromium.new_page(viewport=VIEWPORT, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    shots = Steps(page, "user_study")

    sign_in(page, url, "rater1")
    open_study(page)
    # the export is for admins: the rater is not shown it
    assert not export_shown(page) and not page.get_by_text("Export (admins)").is_visible()
    # Submit before any item is on screen: refused on the message line, nothing marked "Error"
    page.click("#study-submit")
    refused_in_view(page, "#study-message", "no item on screen")
    no_error_badges(page)
    shots.shot("study-tab-refused-before-next")
    page.click("#study-next")
    wait_text(page, "#study-progress", f"0 of {N_ITEMS} item(s) rated")
    wait_text(page, "#study-message", "for image quality and consistency with the prompt")
    assert page.locator("#study-preservation-0").count() == 0 or not page.locator("#study-preservation-0").is_visible()
    for sel in PICTURES:
        page.wait_for_selector(f"{sel} img")
    assert_in_view(page, STUDY_ACTIONS)
    shots.shot("first-item")

    # rate two items; slot i gets quality 5 - i and prompt consistency 1 + i, so what is stored says
    # which slot each score came from
    rated = []
    for n in range(2):
        for i in range(len(METHODS)):
            page.wait_for_selector(f"#study-output-{i} img")
            choose(page, f"study-quality-{i}", 5 - i)
            choose(page, f"study-prompt-consistency-{i}", 1 + i)
        assert_in_view(page, STUDY_ACTIONS)
        shots.shot(f"item-{n + 1}-scored")
        item_id = ctx.study.next_item_id("rater1")
        order = [o.method for o in ctx.study.item(item_id, "rater1").outputs]
        rated.append((item_id, order))
        if n == 0:
            page.click("#study-submit")
        else:  # Alt+S submits on this tab as on Annotate (the focus still on the last score chosen)
            page.keyboard.press("Alt+KeyS")
        wait_text(page, "#study-message", f"Saved your ratings of item {item_id}")
        wait_text(page, "#study-progress", f"{n + 1} of {N_ITEMS} item(s) rated")
        no_error_badges(page)
        shots.shot(f"item-{n + 1}-saved")

    stored = {(r["item_id"], r["method"]): (r["quality"], r["prompt_consistency"], r["preservation"])
              for r in ctx.study.ratings()}
    assert stored == {(item_id, m): (5 - i, 1 + i, None) for item_id, order in rated for i, m in enumerate(order)}

    # a reload starts a new page session: the progress is the store's, kept
    page.reload()
    open_study(page)
    page.click("#study-next")
    wait_text(page, "#study-progress", f"2 of {N_ITEMS} item(s) rated")
    remaining = ctx.study.next_item_id("rater1")
    assert remaining not in {item_id for item_id, _ in rated}
    page.wait_for_selector("#study-output-0 img")
    no_error_badges(page)
    shots.shot("after-reload-progress-kept")

    # submitting with a question left unanswered is refused in place: the pictures, the progress and
    # the scores given stay as they were, the reason shows on the message line, nothing is stored
    for i in range(len(METHODS)):
        choose(page, f"study-quality-{i}", 3)
    choose(page, "study-prompt-consistency-0", 4)
    before = picture_sources(page, PICTURES)
    page.click("#study-submit")
    refused_in_view(page, "#study-message", "score every output for image quality and consistency")
    assert_untouched(page, before)
    assert [checked(page, f"study-quality-{i}") for i in range(len(METHODS))] == [["3"]] * len(METHODS)
    assert checked(page, "study-prompt-consistency-0") == ["4"] and checked(page, "study-prompt-consistency-1") == []
    assert "2 of 3 item(s) rated" in page.inner_text("#study-progress")
    assert len(ctx.study.ratings()) == 2 * len(METHODS)
    assert_in_view(page, STUDY_ACTIONS)
    shots.shot("refused-incomplete")
    # answering the rest submits the same item
    for i in range(1, len(METHODS)):
        choose(page, f"study-prompt-consistency-{i}", 4)
    page.click("#study-submit")
    wait_text(page, "#study-message", f"Saved your ratings of item {remaining}")
    wait_text(page, "#study-message", "You have rated every item")
    no_error_badges(page)

    # the admin sees the export section; the export arrives as a download made in the browser
    sign_in(page, url, "boss")
    open_study(page)
    page.wait_for_selector("#study-export-section", state="visible")
    page.get_by_text("Export (admins)").click()
    with page.expect_download() as download:
        page.click("#study-export")
    saved = tmp_path / "export.csv"
    download.value.save_as(saved)
    assert download.value.suggested_filename.startswith("user-study-")
    assert saved.read_text() == ctx.study.export_csv()
    wait_text(page, "#study-table", "referdiffusion")
    wait_text(page, "#study-message", "Exported the means of 3 method(s)")
    # the bar with Next, Submit and the message stays in view when the page scrolls
    page.locator("#study-csv").scroll_into_view_if_needed()
    assert page.evaluate("window.scrollY") > 100
    for sel in ("#study-next", "#study-submit", "#study-message"):
        box = page.locator(sel).bounding_box()
        assert 0 <= box["y"] and box["y"] + box["height"] <= 200, (sel, box)
    shots.shot("admin-export")
    page.close()


def photo_manifest(folder: Path, methods: list[str]) -> Path:
    """One study item with pictures of an edit model's size (square, 256x256 noise), which fill their boxes."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ["src", *methods]:
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    item = {"item_id": "photo", "source": "src.png", "prompt": "make the left cup red", "referring_spans": [[5, 17]],
            "edit_spans": [[0, 4], [18, 21]], "outputs": {m: f"{m}.png" for m in methods}}
    (folder / "study.jsonl").write_text(json.dumps(item) + "\n")
    return folder / "study.jsonl"


def test_four_methods_and_three_questions_fit_the_screen(chromium, tmp_path, refshapes, verdicts):
    """The widest study one row holds: four outputs, each on all three questions, photo-sized."""
    methods = ["ip2p", "magicbrush", "referdiffusion", "composition"]
    with serving(tmp_path, refshapes, verdicts, photo_manifest(tmp_path / "manifest", methods),
                 preservation=True) as (url, ctx):
        page = chromium.new_page(viewport=VIEWPORT)
        page.set_default_timeout(TIMEOUT_MS)
        shots = Steps(page, "user_study_four_methods")
        sign_in(page, url, "rater1")
        open_study(page)
        page.click("#study-next")
        wait_text(page, "#study-message", "and rest unchanged")
        pictures = ["#study-source", *[f"#study-output-{i}" for i in range(len(methods))]]
        for sel in pictures:
            page.wait_for_selector(f"{sel} img")
        radios = [f"#study-{q}-{i}" for q in ("quality", "prompt-consistency", "preservation")
                  for i in range(len(methods))]
        assert_in_view(page, ["#study-next", "#study-message", "#study-submit", "#study-prompt", *pictures, *radios])
        for i in range(len(methods)):
            for q in ("quality", "prompt-consistency", "preservation"):
                choose(page, f"study-{q}-{i}", 2 + i % 3)
        assert_in_view(page, ["#study-submit", "#study-message"])
        shots.shot("four-methods-scored")
        page.click("#study-submit")
        wait_text(page, "#study-message", "Saved your ratings of item photo")
        no_error_badges(page)
        assert len(ctx.study.ratings()) == len(methods)
        page.close()
