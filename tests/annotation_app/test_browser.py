"""The app in a real headless Chromium (Debian's, driven by Playwright) on a 1366x768 screen, as an
annotator and a reviewer use it for a whole item each (a user-study rater's session is in
`test_browser_user_study.py`).

The annotator: every main action is in view without scrolling; a refused action (a click outside
any object, Compose without a target, Save with nothing to save) leaves the page as it was and says
why in the bar; she picks an object by clicking it, composes a prompt, draws the region with the
brush, generates with a tiny diffusion model, chooses a candidate with the key 2 and by its number
(the numbers the gallery shows), reloads the page and finds her prompt again, and submits. The
reviewer: the decisions are in view; a rejection without a reason is refused in place; she sends the
sample back, Next finds its resubmission although it is still on screen, and she rejects it with a
reason, which the annotator then reads under My samples.

Marked `browser` (skipped by the default run; `.ci/run` runs them). The set-up installs what is
missing: Playwright with pip, Chromium with apt-get (when running as root); when neither can be had
the tests are skipped and say why. Full-page screenshots of every step go to
`test-artifacts/browser/<test>/` (or under $REFCOCO_EDIT_TEST_ARTIFACTS), with `timings.txt`: the
seconds each step of the item took, from the action to the page showing its result.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

# gradio's queue uses a pandas option that pandas 3 deprecates; not ours to fix
pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:.*deprecated.*")]

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage"]
USERS = {"ann1": ("annotator", "ann1-password"), "rev1": ("reviewer", "rev1-password")}
ARTIFACTS = Path(os.environ.get("REFCOCO_EDIT_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "browser"
SCREEN = {"width": 1366, "height": 768}
TIMEOUT_MS = 30_000
GENERATE_TIMEOUT_MS = 180_000
# What must be on screen without scrolling, per view.
ANNOTATE_ACTIONS = ["#annotate-next", "#annotate-release", "#annotate-save", "#annotate-submit", "#annotate-message",
                    "#annotate-image", "#annotate-legend", "#annotate-sentences", "#annotate-target",
                    "#annotate-compose", "#annotate-prompt", "#annotate-pipeline", "#annotate-generate",
                    "#annotate-candidates", "#annotate-result", "#annotate-use-candidate"]
REVIEW_ACTIONS = ["#review-next", "#review-message", "#review-comment", "#review-accept", "#review-reject",
                  "#review-send-back", "#review-source", "#review-result", "#review-prompt"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _run(cmd: list[str], timeout: int) -> bool:
    try:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
        return done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_browser() -> tuple[str | None, str]:
    """(chromium path, "") when Playwright and Chromium are there or could be installed; else (None, why)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if not _run([sys.executable, "-m", "pip", "install", "--quiet", "playwright"], 600):
            return None, "playwright is not installed and `pip install playwright` failed"
        import importlib

        importlib.invalidate_caches()
        try:
            import playwright.sync_api  # noqa: F401,F811
        except ImportError:
            return None, "`pip install playwright` ran but playwright still cannot be imported"
    chromium = chromium_path()
    if chromium is None:
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            return None, "no chromium, and apt-get is missing or this is not root: `apt-get install -y chromium`"
        env_ok = _run([apt, "install", "-y", "chromium"], 900) or (
            _run([apt, "update"], 600) and _run([apt, "install", "-y", "chromium"], 900))
        chromium = chromium_path() if env_ok else None
        if chromium is None:
            return None, "chromium could not be installed with `apt-get install -y chromium`"
    return chromium, ""


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_cache):
    """The app on a free loopback port, on a fresh store, with the tiny SD 1.5 for region edits."""
    from tests.annotation_app.conftest import serve_app

    models = {"region_edit": "tiny-sd15", "composition": "tiny-paint-by-example", "inpaint": "tiny-sd-inpaint"}
    config = {"default_steps": 4, "max_candidates": 4, "pipeline_models": models}
    with serve_app(tmp_path_factory.mktemp("app") / "store.sqlite", USERS, config=config) as (url, ctx, _, _):
        yield url, ctx


class Steps:
    """Numbered full-page screenshots of one test's steps, and the time each step took."""

    def __init__(self, page, name: str) -> None:
        self.page, self.n = page, 0
        self.folder = ARTIFACTS / name
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.times: list[tuple[str, float]] = []
        self._t0: float | None = None

    def shot(self, what: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{what}.png"
        self.page.evaluate("window.scrollTo(0, 0)")  # else the sticky bar is drawn where the view was
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def done(self, what: str) -> float:
        """End the step started last: its time, from the action to its result on the page."""
        took = time.perf_counter() - self._t0
        self.times.append((what, took))
        return took

    def write_times(self) -> str:
        lines = ["step | seconds", "--- | ---"] + [f"{what} | {took:.3f}" for what, took in self.times]
        lines.append(f"whole item | {sum(t for _, t in self.times):.3f}")
        text = "\n".join(lines) + "\n"
        (self.folder / "timings.txt").write_text(text, encoding="utf-8")
        print(f"\n{self.folder.name}:\n{text}")
        return text


def sign_in(page, url: str, user: str) -> None:
    page.goto(url + "/logout")
    page.goto(url + "/")
    page.locator("input[type=text]").first.fill(user)
    page.locator("input[type=password]").fill(USERS[user][1])
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#annotate-next", timeout=TIMEOUT_MS)
    wait_text(page, "#signed-in-as", user)


def text_field(selector: str) -> str:
    """The typing element of a gr.Textbox (an input for one line, a textarea for more)."""
    return f"{selector} input, {selector} textarea"


def wait_text(page, selector: str, text: str, timeout: int = TIMEOUT_MS) -> str:
    page.wait_for_function("([sel, want]) => { const e = document.querySelector(sel);"
                           " return e !== null && e.innerText.includes(want); }", arg=[selector, text],
                           timeout=timeout)
    return page.inner_text(selector)


def picture_pixel(page, selector: str, x: int, y: int) -> tuple[float, float]:
    """The screen position of the centre of picture pixel (x, y) of a gr.Image, as Gradio maps clicks
    to pixels (the picture scaled down to fit its box, never up, and centred)."""
    img = page.locator(f"{selector} img")
    natural = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    box = img.bounding_box()
    r = min(box["width"] / natural[0], box["height"] / natural[1], 1.0)
    ox, oy = (box["width"] - natural[0] * r) / 2, (box["height"] - natural[1] * r) / 2
    return box["x"] + ox + (x + 0.5) * r, box["y"] + oy + (y + 0.5) * r


def click_image_pixel(page, selector: str, x: int, y: int) -> None:
    page.mouse.click(*picture_pixel(page, selector, x, y))


def assert_in_view(page, selectors: list[str]) -> None:
    """Each element lies wholly on the 1366x768 screen with the page not scrolled."""
    page.evaluate("window.scrollTo(0, 0)")
    assert page.evaluate("window.scrollY") == 0
    out = []
    for sel in selectors:
        box = page.locator(sel).first.bounding_box()
        if box is None or box["y"] < 0 or box["x"] < 0 or box["y"] + box["height"] > SCREEN["height"] + 0.5 \
                or box["x"] + box["width"] > SCREEN["width"] + 0.5:
            out.append(f"{sel}: {box}")
    if out:
        page.screenshot(path=str(ARTIFACTS / "not-in-view.png"))
    assert not out, "not on the 1366x768 screen without scrolling: " + "; ".join(out)


def assert_untouched(page, before: dict[str, str | None]) -> None:
    """No component shows Gradio's "Error" state and the pictures are the ones shown before."""
    assert page.locator(".error").count() == 0 and page.get_by_text("Error", exact=True).count() == 0
    for sel, src in before.items():
        now = page.locator(f"{sel} img").first.get_attribute("src") if page.locator(f"{sel} img").count() else None
        assert now == src, f"{sel} changed after a refusal"


def picture_sources(page, selectors: list[str]) -> dict[str, str | None]:
    return {sel: (page.locator(f"{sel} img").first.get_attribute("src") if page.locator(f"{sel} img").count()
                  else None) for sel in selectors}


def refused_in_view(page, selector: str, text: str) -> str:
    message = wait_text(page, selector, text)
    assert message.startswith("Refused:")
    box = page.locator(selector).bounding_box()
    assert 0 <= box["y"] and box["y"] + box["height"] <= SCREEN["height"], "the refusal is not in view"
    return message


def test_annotator_session(chromium, server):
    from annotation_app.render import display_factor
    from refcoco_edit.text.prompts import ref_sentences
    from tests.annotation_app.conftest import inside_pixel

    url, ctx = server
    page = chromium.new_page(viewport=SCREEN)
    page.set_default_timeout(TIMEOUT_MS)
    steps = Steps(page, "annotator")

    # --- sign in: an annotator sees no Review tab
    page.goto(url + "/")
    page.wait_for_selector("input[type=password]")
    steps.shot("sign-in-page")
    sign_in(page, url, "ann1")
    assert "Alt+N" in page.inner_text("#shortcut-line")
    assert page.get_by_role("tab", name="Review").count() == 0
    assert page.get_by_role("tab", name="Annotate").count() == 1

    # --- the next item, with the keyboard
    steps.start()
    page.keyboard.press("Alt+KeyN")
    item = wait_text(page, "#annotate-item", "Ref ")
    page.wait_for_selector("#annotate-image img")
    steps.done("next item")
    image_id = int(re.search(r"image (\d+)", item).group(1))
    suggested = int(re.search(r"Ref (\d+)", item).group(1))
    assert "held for you 30 min" in item
    # the expression picker offers this ref's expressions, no more
    sentences = ref_sentences(ctx.data.ref(suggested))
    assert page.locator("#annotate-sentences input[type=radio]").count() == len(sentences)
    assert page.inner_text("#annotate-sentences").count(sentences[0]) == 1
    assert_in_view(page, ANNOTATE_ACTIONS)
    steps.shot("next-item")

    # --- a click outside every object is refused in place: nothing blanks, and clicks still work
    f = display_factor(ctx.image(image_id).size)
    objects = ctx.objects(image_id)
    covered = np.zeros_like(objects[0].mask, bool)
    for o in objects:
        covered |= o.mask.astype(bool)
    ys, xs = np.nonzero(~covered)
    before = picture_sources(page, ["#annotate-image"])
    click_image_pixel(page, "#annotate-image", int(xs[0]) * f, int(ys[0]) * f)
    refused_in_view(page, "#annotate-message", "no object at")
    assert_untouched(page, before)
    assert page.locator("#annotate-image img").count() == 1
    steps.shot("refused-click-outside")

    # --- pick another object by clicking it
    target = next(o for o in objects
                  if o.ref_id is not None and o.ref_id != suggested and ctx.queue.done_for(o.ref_id, "ann1") is None)
    x, y = inside_pixel(ctx, image_id, target.ann_id)
    steps.start()
    click_image_pixel(page, "#annotate-image", x * f, y * f)
    wait_text(page, "#annotate-message", f"Picked object {target.ann_id}")
    steps.done("pick object by click")
    assert f"Ref {target.ref_id}" in page.inner_text("#annotate-item")
    # outlines only: the picked object's inside shows its own colours; the toggle hides all outlines
    before = page.locator("#annotate-image img").get_attribute("src")
    page.click("#annotate-outlines input")
    wait_text(page, "#annotate-message", "Outlines hidden")
    page.wait_for_function("([sel, old]) => document.querySelector(sel).getAttribute('src') !== old",
                           arg=["#annotate-image img", before])
    page.click("#annotate-outlines input")
    wait_text(page, "#annotate-message", "Outlines shown")
    assert "picked source object" in page.inner_text("#annotate-legend")

    # --- Compose without a target: refused, in words of the page (no command-line flag)
    before = picture_sources(page, ["#annotate-image"])
    page.fill(text_field("#annotate-target"), "")
    page.click("#annotate-compose")
    message = refused_in_view(page, "#annotate-message", "Target box")
    assert "--" not in message
    assert_untouched(page, before)
    steps.shot("refused-compose")

    # --- compose the prompt: replace it with a circle; P_r and P_e are highlighted
    page.fill(text_field("#annotate-target"), "circle")
    steps.start()
    page.click("#annotate-compose")
    wait_text(page, "#annotate-message", "Prompt:")
    steps.done("compose prompt")
    prompt_text = page.inner_text("#annotate-message").split("Prompt:", 1)[1].strip()
    assert "circle" in prompt_text
    steps.shot("prompt-composed")

    # --- draw the region with the brush: a stroke, taken as the box around it (not the object's shape)
    page.get_by_text("Region to edit (default: the picked object)").click()
    editor = page.locator("#annotate-region")
    editor.scroll_into_view_if_needed()
    editor.get_by_role("button", name="Brush", exact=True).click()
    canvas = editor.locator("canvas").first.bounding_box()
    x0, y0 = canvas["x"] + canvas["width"] * 0.35, canvas["y"] + canvas["height"] * 0.3
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(x0 + 5 * i, y0 + 4 * i)
    page.mouse.up()
    page.get_by_label("box around strokes").check()
    steps.start()
    page.click("#annotate-region-drawn")
    wait_text(page, "#annotate-message", "Region: drawn")
    steps.done("use drawn region")
    page.fill("#annotate-steps input", "3")
    steps.shot("region-drawn")

    # --- generate two candidates with the tiny region-edit model
    page.evaluate("window.scrollTo(0, 0)")
    assert page.input_value(text_field("#annotate-gen-text")) == "a circle"
    page.fill("#annotate-num input", "2")
    steps.start()
    page.keyboard.press("Alt+KeyG")
    wait_text(page, "#annotate-message", "candidate(s) from region_edit (tiny-sd15)", timeout=GENERATE_TIMEOUT_MS)
    page.wait_for_selector("#annotate-candidates .thumbnail-item")
    steps.done("generate 2 (tiny model, 3 steps)")
    thumbs = page.locator("#annotate-candidates .thumbnail-item")
    assert thumbs.count() == 2
    # the gallery numbers candidates 1, 2 (not the store's ids), as the number box and the keys do
    captions = page.locator("#annotate-candidates .caption-label").all_inner_texts()
    assert [c.split(" · ")[0] for c in captions] == ["1", "2"], captions
    steps.shot("candidates")

    # --- key 2 chooses the second candidate; the number box follows; typing 1 chooses the first
    page.locator("#annotate-item").click()  # focus outside any text box
    steps.start()
    page.keyboard.press("Digit2")
    wait_text(page, "#annotate-message", "Using candidate 2")
    page.wait_for_selector("#annotate-result img")
    steps.done("choose candidate (key 2)")
    assert page.input_value("#annotate-candidate-number input") == "2"
    assert "chosen" in page.locator("#annotate-candidates .caption-label").nth(1).inner_text()
    page.fill("#annotate-candidate-number input", "1")
    page.click("#annotate-use-candidate")
    wait_text(page, "#annotate-message", "Using candidate 1")
    assert "chosen" in page.locator("#annotate-candidates .caption-label").nth(0).inner_text()
    page.locator("#annotate-candidates .thumbnail-item").nth(1).click()  # a click on the gallery
    wait_text(page, "#annotate-message", "Using candidate 2")
    assert page.input_value("#annotate-candidate-number input") == "2"
    assert_in_view(page, ANNOTATE_ACTIONS)
    steps.shot("candidate-chosen")

    # --- reload the page: the draft comes back with its prompt and choice, and can be submitted
    page.reload()
    page.wait_for_selector("#annotate-next")
    steps.start()
    page.click("#annotate-next")
    wait_text(page, "#annotate-message", "your draft, resumed")
    page.wait_for_selector("#annotate-result img")
    steps.done("next after reload (draft resumed)")
    assert "circle" in page.inner_text("#annotate-prompt")
    assert page.input_value("#annotate-candidate-number input") == "2"
    steps.start()
    page.keyboard.press("Alt+KeyS")
    wait_text(page, "#annotate-message", "Submitted sample")
    steps.done("submit")
    assert "submitted" in page.inner_text("#annotate-item") and "candidate**" not in page.inner_text("#annotate-item")
    steps.shot("submitted")

    # --- the next item: Save with nothing to save is refused in place; Release gives the item back
    page.click("#annotate-next")
    wait_text(page, "#annotate-message", "pick the object")
    before = picture_sources(page, ["#annotate-image"])
    page.click("#annotate-save")
    refused_in_view(page, "#annotate-message", "nothing to save yet")
    assert_untouched(page, before)
    page.click("#annotate-release")
    wait_text(page, "#annotate-message", "given back to the queue")
    assert ctx.store.assignments("ann1") == []
    steps.write_times()

    # --- the store holds what the browser did
    recs = list(ctx.store.list_samples())
    assert len(recs) == 1
    s = recs[0].sample
    assert (s.status, s.annotator) == ("candidate", "ann1")
    assert (s.ref_id, s.ann_id, s.image_id) == (target.ref_id, target.ann_id, image_id)
    assert s.pipeline == "region_edit" and s.generation["model"] == "tiny-sd15"
    assert s.prompt == prompt_text and "circle" in s.edit_text
    cands = ctx.store.get_candidates(s.sample_id)
    assert len(cands) == 2 and cands[1].chosen
    inside = s.edit_mask.astype(bool)
    assert np.array_equal(np.asarray(s.edited_image)[inside], np.asarray(cands[1].image)[inside])
    assert np.array_equal(s.source_mask, ctx.ann_mask(target.ann_id))
    # the drawn region is a box, not the object's shape; outside it the result keeps the source's pixels
    from annotation_app.render import box_mask
    from refcoco_edit.pipelines.base import dilate
    from refcoco_edit.store import rle

    region = rle.decode(s.generation["region"])
    assert region.any() and np.array_equal(region, box_mask(region))
    assert not np.array_equal(region, s.source_mask)
    far = ~dilate(region, 12).astype(bool)
    assert np.array_equal(np.asarray(s.edited_image)[far], np.asarray(s.source_image)[far])
    page.close()


def test_reviewer_session(chromium, server):
    from annotation_app.handlers import annotate as A

    url, ctx = server
    if not list(ctx.store.list_samples(status="candidate")):  # run on its own: a submitted sample by ann1
        st, _ = A.next_item(ctx, "ann1", None)
        st, _ = A.compose_prompt(ctx, "ann1", st, 0, "remove", "")
        st, _ = A.generate(ctx, "ann1", st, "classical_inpaint", 1, 0, None, "")
        st, _ = A.pick_candidate(ctx, "ann1", st, 0)
        A.submit(ctx, "ann1", st)
    sample_id = next(iter(ctx.store.list_samples(status="candidate", images=False))).sample.sample_id
    page = chromium.new_page(viewport=SCREEN)
    page.set_default_timeout(TIMEOUT_MS)
    steps = Steps(page, "reviewer")

    sign_in(page, url, "rev1")
    page.get_by_role("tab", name="Review").click()
    steps.start()
    page.keyboard.press("Alt+KeyN")
    info = wait_text(page, "#review-info", "Made by")
    for sel in ("#review-source img", "#review-result img", "#review-source-mask img", "#review-edit-mask img"):
        page.wait_for_selector(sel)
    steps.done("next to review")
    assert "ann1" in info and "submitted" in info and sample_id in info
    assert page.inner_text("#review-prompt").count("P_r") >= 1
    assert_in_view(page, REVIEW_ACTIONS)
    steps.shot("review-side-by-side")

    # --- a rejection without a reason is refused in place
    before = picture_sources(page, ["#review-source", "#review-result"])
    page.click("#review-reject")
    refused_in_view(page, "#review-message", "give a reason")
    assert_untouched(page, before)
    steps.shot("refused-reject")

    # --- send it back with a comment; the annotator resubmits while it is still on this screen
    page.fill(text_field("#review-comment"), "make the circle larger")
    steps.start()
    page.keyboard.press("Alt+KeyB")
    wait_text(page, "#review-message", "sent back")
    steps.done("send back")
    st, view = A.next_item(ctx, "ann1", None)
    assert st.sample_id == sample_id and "make the circle larger" in view["item"]
    A.submit(ctx, "ann1", st)
    steps.start()
    page.click("#review-next")
    wait_text(page, "#review-message", f"Reviewing {sample_id}")
    steps.done("next finds the resubmission")
    # --- reject it with a reason
    page.fill(text_field("#review-comment"), "the circle covers the neighbour")
    steps.start()
    page.keyboard.press("Alt+KeyR")
    wait_text(page, "#review-message", "rejected")
    steps.done("reject with a reason")
    steps.shot("rejected")
    page.click("#review-next")
    wait_text(page, "#review-message", "Nothing to review")

    # --- a reviewer may annotate too: Next on Annotate says the ref is held, and Release gives it back
    page.get_by_role("tab", name="Annotate").click()
    page.click("#annotate-next")
    held = wait_text(page, "#annotate-item", "held for you")
    assert "Release" in held
    page.click("#annotate-release")
    wait_text(page, "#annotate-message", "given back")
    assert ctx.store.assignments("rev1") == []
    steps.write_times()

    # --- the annotator reads the reason under My samples
    sign_in(page, url, "ann1")
    page.click("#annotate-next")
    message = wait_text(page, "#annotate-message", "Your samples")
    assert "1 rejected" in message
    page.get_by_text("My samples: status and the reviewers' reasons").click()
    page.click("#annotate-mine-refresh")
    table = wait_text(page, "#annotate-mine", "the circle covers the neighbour")
    assert sample_id in table and "rejected" in table and "rev1" in table
    # the bar with Next, Save and Submit stays in view when the page scrolls
    page.locator("#annotate-mine").scroll_into_view_if_needed()
    assert page.evaluate("window.scrollY") > 100
    for sel in ("#annotate-next", "#annotate-submit", "#annotate-message"):
        box = page.locator(sel).bounding_box()
        assert 0 <= box["y"] and box["y"] + box["height"] <= 200, (sel, box)
    steps.shot("my-samples")

    # --- the other views, for the record
    page.get_by_role("tab", name="Progress").click()
    wait_text(page, "#progress-summary", "By status")
    assert "rejected" in page.inner_text("#progress-summary")
    steps.shot("progress")
    page.get_by_role("tab", name="User study").click()
    page.wait_for_selector("#study-next")
    steps.shot("user-study")
    assert [(r.reviewer, r.decision) for r in ctx.store.get_reviews(sample_id)] == [
        ("rev1", "send_back"), ("rev1", "reject")]
    page.close()
