"""Fixtures for the app's handler tests: a store with four users, the bundled RefShapes sample, and
pipelines that need no weights (OpenCV removal for real, a fake painter for the diffusion ones)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PASSWORDS = {"ann1": "pw-ann1", "ann2": "pw-ann2", "rev1": "pw-rev1", "boss": "pw-boss"}
ROLES = {"ann1": "annotator", "ann2": "annotator", "rev1": "reviewer", "boss": "admin"}


class FakePipeline:
    """Paints the region a flat colour that depends on the seed; M_e is the region. Records calls."""

    def __init__(self, name: str, model: str | None = None) -> None:
        self.name = name
        self.model = model or "fake"
        self.calls: list[dict] = []

    def generate(self, image, mask, *, num=1, seed=0, **kwargs):
        from PIL import Image

        from refcoco_edit.pipelines.base import Candidate

        self.calls.append({"num": num, "seed": seed, **kwargs})
        m = np.asarray(mask).astype(bool)
        out = []
        for i in range(num):
            arr = np.asarray(image.convert("RGB")).copy()
            arr[m] = ((seed + i) * 40 % 256, 200, 100)
            out.append(Candidate(image=Image.fromarray(arr), seed=seed + i,
                                 params={"seed": seed + i, "steps": kwargs.get("steps"), "text": kwargs.get("text")},
                                 model=self.model, edit_mask=m.astype(np.uint8)))
        return out


def pipeline_factory(name: str, model: str | None):
    """The real OpenCV removal (no weights, fast); fakes for the diffusion pipelines."""
    if name == "classical_inpaint":
        from refcoco_edit.pipelines import get_pipeline

        return get_pipeline(name, progress=False)
    return FakePipeline(name, model)


@pytest.fixture(scope="session")
def refshapes():
    from refcoco_edit.refer.reader import RefCOCO

    return RefCOCO.load("sample")


@pytest.fixture(scope="session")
def verdicts(refshapes):
    from refcoco_edit.curation.selection import select_candidates

    return {c.ref_id: c for c in select_candidates(refshapes)}


@pytest.fixture(scope="session")
def user_rows(tmp_path_factory) -> Path:
    """A store holding the four users, made once (scrypt is slow on purpose); tests copy it."""
    from refcoco_edit.store import Store

    path = tmp_path_factory.mktemp("users") / "users.sqlite"
    with Store.open(path, durable=False) as store:
        for name, pw in PASSWORDS.items():
            store.add_user(name, ROLES[name], pw)
    return path


def _copy_store(src: Path, dst: Path) -> None:
    import sqlite3

    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


@pytest.fixture
def make_ctx(tmp_path, refshapes, verdicts, user_rows) -> Iterator:
    """`make_ctx(**config)` -> an AppContext on a fresh store in tmp_path (closed at the end)."""
    from annotation_app.context import AppConfig, AppContext
    from refcoco_edit.store import Store

    made = []

    def make(name: str = "store.sqlite", **config):
        path = tmp_path / name
        if not path.exists():
            _copy_store(user_rows, path)
        store = Store.open(path, durable=False)
        cfg = AppConfig(store_path=path, durable=False, **config)
        ctx = AppContext(cfg, store=store, data=refshapes, verdicts=verdicts, pipeline_factory=pipeline_factory)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


@pytest.fixture
def ctx(make_ctx):
    return make_ctx()


def inside_pixel(ctx, image_id: int, ann_id: int) -> tuple[int, int]:
    """A pixel (x, y) where a click means object `ann_id` (inside it, not on a smaller object)."""
    from annotation_app.render import object_at

    objects = ctx.objects(image_id)
    mask = next(o.mask for o in objects if o.ann_id == ann_id)
    ys, xs = np.nonzero(mask)
    order = np.argsort(np.hypot(ys - ys.mean(), xs - xs.mean()))
    for k in order:
        x, y = int(xs[k]), int(ys[k])
        hit = object_at(objects, x, y)
        if hit is not None and hit.ann_id == ann_id:
            return x, y
    raise AssertionError(f"no pixel selects object {ann_id}")


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium for the browser tests (skipped without Playwright and Chromium)."""
    from tests.annotation_app.test_browser import CHROMIUM_FLAGS, ensure_browser

    path, why = ensure_browser()
    if path is None:
        pytest.skip(f"browser tests need Playwright and Chromium: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(store_path: Path, users: dict[str, tuple[str, str]], *, prepare: Callable[[Any], None] | None = None,
              config: dict[str, Any] | None = None, **ctx_kwargs: Any) -> Iterator[tuple[str, Any, Path, Any]]:
    """The app as `refcoco-edit app` serves it, on a free loopback port, over a fresh store at
    `store_path` holding `users` ({name: (role, password)}); `prepare(ctx)` runs before the page is
    built. Yields (url without a trailing slash, ctx, Gradio's file folder, the Gradio app) and afterwards puts back
    what `configure_process` changed for the whole process (PIL's pixel limit, GRADIO_TEMP_DIR)."""
    from PIL import Image

    from annotation_app.app import configure_process, launch
    from annotation_app.context import AppConfig, AppContext
    from refcoco_edit.store import Store

    saved, saved_pixels = os.environ.get("GRADIO_TEMP_DIR"), Image.MAX_IMAGE_PIXELS
    with Store.open(store_path, durable=False) as store:
        for name, (role, pw) in users.items():
            store.add_user(name, role, pw)
    cache = configure_process(store_path, 4096 * 4096)
    ctx = AppContext(AppConfig(store_path=store_path, durable=False, **(config or {})), **ctx_kwargs)
    if prepare is not None:
        prepare(ctx)
    port = free_port()
    demo = launch(ctx, port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}", ctx, cache, demo
    finally:
        demo.close()
        ctx.close()
        Image.MAX_IMAGE_PIXELS = saved_pixels
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved
