"""End to end in a real headless Chromium (Debian's, driven by Playwright): an annotator signs in,
takes an item, picks an object by clicking it, composes a prompt, draws the region with the brush,
generates candidates with a tiny diffusion model, picks one and submits; the annotator's attempt to review is
refused; a reviewer signs in and accepts; the store holds the accepted sample with the right people on it.

Marked `browser` (skipped by the default run). The set-up installs what is missing: Playwright with
pip, Chromium with apt-get (when running as root); when neither can be had the test is skipped and
says why. Screenshots of every step go to `test-artifacts/browser/` (or $REFCOCO_EDIT_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
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
TIMEOUT_MS = 30_000
GENERATE_TIMEOUT_MS = 180_000


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromium():
    path, why = ensure_browser()
    if path is None:
        pytest.skip(f"browser tests need Playwright and Chromium: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_cache):
    """The app on a free loopback port, on a fresh store, with the tiny SD 1.5 for region edits."""
    from annotation_app.app import configure_process, launch
    from annotation_app.context import AppConfig, AppContext
    from refcoco_edit.store import Store

    saved = {k: os.environ.get(k) for k in ("GRADIO_TEMP_DIR",)}
    from PIL import Image

    saved_pixels = Image.MAX_IMAGE_PIXELS  # configure_process changes it for the whole process
    store_path = tmp_path_factory.mktemp("app") / "store.sqlite"
    with Store.open(store_path, durable=False) as store:
        for name, (role, pw) in USERS.items():
            store.add_user(name, role, pw)
    configure_process(store_path, 4096 * 4096)
    ctx = AppContext(AppConfig(store_path=store_path, durable=False, default_steps=4, max_candidates=4,
                               pipeline_models={"region_edit": "tiny-sd15", "composition": "tiny-paint-by-example",
                                                "inpaint": "tiny-sd-inpaint"}))
    port = free_port()
    demo = launch(ctx, port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}", ctx
    finally:
        demo.close()
        ctx.close()
        Image.MAX_IMAGE_PIXELS = saved_pixels
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Steps:
    """Numbered screenshots of one test's steps."""

    def __init__(self, page, name: str) -> None:
        self.page, self.n = page, 0
        self.folder = ARTIFACTS / name
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)

    def shot(self, what: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{what}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def sign_in(page, url: str, user: str) -> None:
    page.goto(url + "/logout")
    page.goto(url + "/")
    page.locator("input[type=text]").first.fill(user)
    page.locator("input[type=password]").fill(USERS[user][1])
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#annotate-next", timeout=TIMEOUT_MS)


def wait_text(page, selector: str, text: str, timeout: int = TIMEOUT_MS) -> str:
    page.wait_for_function("([sel, want]) => { const e = document.querySelector(sel);"
                           " return e !== null && e.innerText.includes(want); }", arg=[selector, text],
                           timeout=timeout)
    return page.inner_text(selector)


def click_image_pixel(page, selector: str, x: int, y: int) -> None:
    """Click the centre of picture pixel (x, y) of a gr.Image, as Gradio maps clicks to pixels
    (the picture scaled down to fit its box, never up, and centred)."""
    img = page.locator(f"{selector} img")
    natural = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    box = img.bounding_box()
    r = min(box["width"] / natural[0], box["height"] / natural[1], 1.0)
    ox, oy = (box["width"] - natural[0] * r) / 2, (box["height"] - natural[1] * r) / 2
    page.mouse.click(box["x"] + ox + (x + 0.5) * r, box["y"] + oy + (y + 0.5) * r)


def test_annotate_then_review_in_chromium(chromium, server):
    from annotation_app.render import display_factor
    from tests.annotation_app.conftest import inside_pixel

    url, ctx = server
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    steps = Steps(page, "annotate_then_review")

    # --- the annotator signs in and takes an item with the keyboard shortcut
    page.goto(url + "/")
    page.wait_for_selector("input[type=password]")
    steps.shot("sign-in-page")
    sign_in(page, url, "ann1")
    assert "Alt+N" in page.inner_text("#shortcut-line")
    page.keyboard.press("Alt+KeyN")
    item = wait_text(page, "#annotate-item", "Ref ")
    image_id = int(re.search(r"image (\d+)", item).group(1))
    suggested = int(re.search(r"Ref (\d+)", item).group(1))
    page.wait_for_selector("#annotate-image img")
    steps.shot("next-item")

    # --- pick another object of the image by clicking it
    target = next(o for o in ctx.objects(image_id)
                  if o.ref_id is not None and o.ref_id != suggested and ctx.queue.done_for(o.ref_id, "ann1") is None)
    x, y = inside_pixel(ctx, image_id, target.ann_id)
    f = display_factor(ctx.image(image_id).size)
    click_image_pixel(page, "#annotate-image", x * f, y * f)
    wait_text(page, "#annotate-message", f"Picked object {target.ann_id}")
    assert f"Ref {target.ref_id}" in page.inner_text("#annotate-ref")
    assert "igible" in page.inner_text("#annotate-ref")
    steps.shot("object-picked")

    # --- compose the prompt: replace it with a circle; P_r and P_e are highlighted
    page.fill("#annotate-target textarea", "circle")
    page.click("#annotate-compose")
    wait_text(page, "#annotate-message", "Prompt:")
    prompt_text = page.inner_text("#annotate-message").split("Prompt:", 1)[1].strip()
    assert "circle" in prompt_text
    highlighted = page.inner_text("#annotate-prompt")
    assert "P_r" in highlighted and "P_e" in highlighted
    steps.shot("prompt-composed")

    # --- draw the region with the brush: a stroke, taken as the box around it (not the object's shape)
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
    page.click("#annotate-region-drawn")
    wait_text(page, "#annotate-message", "Region: drawn")
    steps.shot("region-drawn")

    # --- generate two candidates with the tiny region-edit model, with a progress bar
    assert page.input_value("#annotate-gen-text textarea") == "a circle"
    page.fill("#annotate-num input[type=number]", "2")
    page.fill("#annotate-steps input", "3")
    page.keyboard.press("Alt+KeyG")
    wait_text(page, "#annotate-message", "candidate(s) from region_edit (tiny-sd15)", timeout=GENERATE_TIMEOUT_MS)
    page.wait_for_selector("#annotate-candidates .thumbnail-item")
    assert page.locator("#annotate-candidates .thumbnail-item").count() == 2
    steps.shot("candidates")

    # --- pick the second candidate: the result with M_e appears; then submit with Alt+S
    page.locator("#annotate-candidates .thumbnail-item").nth(1).click()
    wait_text(page, "#annotate-message", "Using candidate")
    page.wait_for_selector("#annotate-result img")
    steps.shot("candidate-chosen")
    page.keyboard.press("Alt+KeyS")
    wait_text(page, "#annotate-message", "Submitted sample")
    steps.shot("submitted")

    # --- the annotator cannot review: the server refuses
    page.get_by_role("tab", name="Review").click()
    page.click("#review-next")
    refusal = wait_text(page, "#review-message", "only reviewers or admins may review samples")
    assert refusal.startswith("Refused:")
    steps.shot("annotator-refused-review")

    # --- the reviewer signs in, sees the sample side by side, and accepts it with Alt+A
    sign_in(page, url, "rev1")
    page.get_by_role("tab", name="Review").click()
    page.keyboard.press("Alt+KeyN")
    info = wait_text(page, "#review-info", "Made by")
    assert "ann1" in info and "region_edit" in info and "tiny-sd15" in info
    assert page.inner_text("#review-prompt").count("P_r") >= 1
    for sel in ("#review-source img", "#review-result img", "#review-source-mask img", "#review-edit-mask img"):
        page.wait_for_selector(sel)
    steps.shot("review-side-by-side")
    page.keyboard.press("Alt+KeyA")
    wait_text(page, "#review-message", "accepted")
    steps.shot("accepted")

    # --- the progress page counts it
    page.get_by_role("tab", name="Progress").click()
    wait_text(page, "#progress-summary", "By status")
    steps.shot("progress")

    # --- the store holds what the browser did
    recs = list(ctx.store.list_samples())
    assert len(recs) == 1
    s = recs[0].sample
    assert (s.status, s.annotator, s.reviewer) == ("accepted", "ann1", "rev1")
    assert (s.ref_id, s.ann_id, s.image_id) == (target.ref_id, target.ann_id, image_id)
    assert s.pipeline == "region_edit" and s.generation["model"] == "tiny-sd15"
    assert s.prompt == prompt_text and "circle" in s.edit_text
    cands = ctx.store.get_candidates(s.sample_id)
    assert len(cands) == 2 and cands[1].chosen
    assert np.array_equal(np.asarray(s.edited_image), np.asarray(cands[1].image))
    assert np.array_equal(s.source_mask, ctx.ann_mask(target.ann_id))
    assert [(r.reviewer, r.decision) for r in ctx.store.get_reviews(s.sample_id)] == [("rev1", "accept")]
    # the drawn region is a box, not the object's shape; outside it (and the feathered edge) the
    # result keeps the source's pixels
    from annotation_app.render import box_mask
    from refcoco_edit.pipelines.base import dilate
    from refcoco_edit.store import rle

    region = rle.decode(s.generation["region"])
    assert region.any() and np.array_equal(region, box_mask(region))
    assert not np.array_equal(region, s.source_mask)
    far = ~dilate(region, 12).astype(bool)
    assert np.array_equal(np.asarray(s.edited_image)[far], np.asarray(s.source_image)[far])
    page.close()
