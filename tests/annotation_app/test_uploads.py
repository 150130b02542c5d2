"""Checked uploads: types by content, size limits, decompression bombs, paths outside the upload folder;
at Gradio's upload route, each user's quota (bytes and files, expiring) and only openable images kept."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from annotation_app.errors import UploadError
from annotation_app.handlers import annotate as A
from annotation_app.uploads import (
    UploadLimits,
    UploadQuota,
    UploadStore,
    decode_image,
    limits_for,
    read_upload,
    sniff_format,
)
from refcoco_edit.errors import InputError
from tests.images import bomb_png


def png_bytes(w: int, h: int, colour=(1, 2, 3), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "uploads"
    r.mkdir()
    return r


def test_sniff_by_content():
    assert sniff_format(png_bytes(2, 2)) == "PNG"
    assert sniff_format(b"\xff\xd8\xff\xe0....") == "JPEG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"GIF89a") is None and sniff_format(b"<svg") is None


def test_good_upload_is_rgb_and_lossless(root):
    from PIL import Image

    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # one transparent pixel: composited on black
    Image.fromarray(rgba, "RGBA").save(root / "a.png")
    im = read_upload(root / "a.png", upload_root=root)
    arr = np.asarray(im)
    assert im.mode == "RGB" and im.size == (5, 6)
    assert tuple(arr[0, 0]) == (0, 0, 0) and tuple(arr[1, 1]) == (200, 0, 0)


def test_type_is_read_from_the_content_not_the_name(root):
    (root / "evil.png").write_text("<script>alert(1)</script>")
    with pytest.raises(UploadError, match="not a PNG, JPEG or WebP"):
        read_upload(root / "evil.png", upload_root=root)
    from PIL import Image

    Image.new("RGB", (4, 4)).save(root / "pic.gif", format="GIF")
    with pytest.raises(UploadError, match="not a PNG"):
        read_upload(root / "pic.gif", upload_root=root)
    (root / "trunc.png").write_bytes(png_bytes(50, 50)[:60])
    with pytest.raises(UploadError, match="trunc.png: not a readable image"):
        read_upload(root / "trunc.png", upload_root=root)
    (root / "empty.png").write_bytes(b"")
    with pytest.raises(UploadError, match="empty"):
        read_upload(root / "empty.png", upload_root=root)


def test_size_limits_and_bombs(root):
    (root / "big.png").write_bytes(png_bytes(64, 64))
    with pytest.raises(UploadError, match="over the upload limit"):
        read_upload(root / "big.png", upload_root=root, max_bytes=100)
    with pytest.raises(UploadError, match="over the limit of 1000 pixels"):
        read_upload(root / "big.png", upload_root=root, max_pixels=1000)
    (root / "bomb1.png").write_bytes(bomb_png(5000, 5000, "L"))  # 25 M pixels, over our 16.8 M
    with pytest.raises(UploadError, match="5000x5000 pixels is over the limit"):
        read_upload(root / "bomb1.png", upload_root=root)
    data = bomb_png(100_000, 100_000, "L")
    assert len(data) < 1000  # a few hundred bytes claiming 10 G pixels
    (root / "bomb2.png").write_bytes(data)
    with pytest.raises(UploadError, match="bomb2.png: image over the pixel limit"):  # Pillow refuses it on open
        read_upload(root / "bomb2.png", upload_root=root)
    # past a (too) generous limit of ours, Pillow's bomb warning is an error too
    with pytest.raises(UploadError, match="over the pixel limit"):
        decode_image(bomb_png(10_000, 10_000, "L"), max_pixels=10**12)


def test_paths_outside_the_upload_folder_are_refused(root, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes(3, 3))
    with pytest.raises(UploadError, match="not an upload"):
        read_upload(outside, upload_root=root)
    with pytest.raises(UploadError, match="not an upload"):
        read_upload(root / ".." / "secret.png", upload_root=root)
    (root / "link.png").symlink_to(outside)
    with pytest.raises(UploadError, match="not an upload"):
        read_upload(root / "link.png", upload_root=root)
    with pytest.raises(UploadError, match="gone"):
        read_upload(root / "missing.png", upload_root=root)
    with pytest.raises(UploadError, match="no file"):
        read_upload(None, upload_root=root)
    (root / "dir.png").mkdir()
    with pytest.raises(UploadError, match="regular file"):
        read_upload(root / "dir.png", upload_root=root)


def test_upload_store_keeps_files_beside_the_store(tmp_path, root):
    store_path = tmp_path / "s.sqlite"
    ups = UploadStore(store_path)
    (root / "x.png").write_bytes(png_bytes(7, 3, (9, 8, 7)))
    digest, im = ups.add_file(root / "x.png", upload_root=root)
    files = list((tmp_path / "s.sqlite.uploads").rglob("*.png"))
    assert [f.stem for f in files] == [digest]
    assert np.array_equal(np.asarray(ups.get(digest)), np.asarray(im))
    with pytest.raises(UploadError, match="no longer stored"):
        ups.get("0" * 64)


def test_handler_refuses_bad_uploads_and_keeps_state(ctx, root):
    st, _ = A.next_item(ctx, "ann1", None)
    (root / "bomb.png").write_bytes(bomb_png(50_000, 50_000, "L"))
    with pytest.raises(UploadError):
        A.use_upload(ctx, "ann1", st, str(root / "bomb.png"), upload_root=root)
    assert st.example_hash is None
    assert list(ctx.uploads.root.rglob("*.png")) == []


# ---------------------------------------------------------------- the upload route's guard
def noise_png(side: int, seed: int) -> bytes:
    """A PNG of random pixels: about 3 * side**2 bytes, whatever the compressor does."""
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


GUARD_USERS = {"u1": "pw-u1", "u2": "pw-u2"}
GUARD_LIMITS = UploadLimits(max_bytes=4000, max_pixels=64 * 64, quota_bytes=6000, quota_files=3, keep_s=3600)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A small Gradio app behind sign-in whose upload route is guarded (small limits, a clock the test
    moves); (url, Gradio's upload folder, the quota, the clock)."""
    import os
    import socket

    import gradio as gr
    from starlette.middleware import Middleware

    from annotation_app.uploads import UploadGuard

    folder = tmp_path_factory.mktemp("guarded")
    saved = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    clock = [1000.0]
    quota = UploadQuota(GUARD_LIMITS, clock=lambda: clock[0])
    with gr.Blocks(analytics_enabled=False) as demo:
        gr.File()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True, auth=list(GUARD_USERS.items()),
                ssr_mode=False, app_kwargs={"middleware": [Middleware(UploadGuard, limits=GUARD_LIMITS, quota=quota)]})
    try:
        yield f"http://127.0.0.1:{port}/", folder, quota, clock
    finally:
        demo.close()
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved


def session(url: str, user: str | None):
    import httpx

    http = httpx.Client(base_url=url, timeout=30)
    if user is not None:
        r = http.post("login", data={"username": user, "password": GUARD_USERS[user]})
        assert r.status_code == 200 and r.json().get("success"), r.text
    return http


def upload(http, name: str, data: bytes):
    return http.post("gradio_api/upload", files=[("files", (name, data, "application/octet-stream"))])


def holding(folder: Path, data: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.read_bytes() == data]


def test_limits_live_in_one_place_and_are_checked(tmp_path):
    from annotation_app.context import AppConfig
    from annotation_app.uploads import LIMITS

    assert limits_for(AppConfig(store_path=tmp_path / "s.sqlite")) == LIMITS  # the app's defaults are these

    class Config:
        max_upload_bytes = 1234
        max_upload_pixels = 99

    lim = limits_for(Config())
    assert (lim.max_bytes, lim.max_pixels) == (1234, 99)
    assert (lim.quota_bytes, lim.quota_files, lim.keep_s) == (UploadLimits().quota_bytes, 1000, 24 * 3600)
    with pytest.raises(InputError, match="quota_files must be positive"):
        UploadLimits(quota_files=0)
    with pytest.raises(InputError, match="over quota_bytes"):
        UploadLimits(max_bytes=10, quota_bytes=5)


def test_only_images_are_kept_at_the_upload_route(guarded):
    url, folder, quota, _ = guarded
    assert session(url, None).post("gradio_api/upload", files=[("files", ("a.png", b"x"))]).status_code == 401
    http = session(url, "u2")
    good = noise_png(16, seed=1)
    r = upload(http, "a.png", good)
    assert r.status_code == 200, r.text
    (stored,) = r.json()
    assert Path(stored).read_bytes() == good and quota.usage("u2") == (len(good), 1)
    # a name is not a type: text called .png is refused and not kept
    fake = b"<script>alert(1)</script> not an image at all"
    r = upload(http, "cat.png", fake)
    assert r.status_code == 415 and "cat.png: not a readable image" in r.text and "PNG, JPEG or WebP" in r.text
    assert holding(folder, fake) == []
    # an image Pillow opens but uploads may not be (GIF), and a decompression bomb, likewise
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="GIF")
    r = upload(http, "pic.gif", buf.getvalue())
    assert r.status_code == 415 and "pic.gif: not a readable image" in r.text
    bomb = bomb_png(50_000, 50_000, "L")
    r = upload(http, "bomb.png", bomb)
    assert r.status_code == 415 and "bomb.png" in r.text and "over the pixel limit" in r.text
    r = upload(http, "wide.png", png_bytes(65, 64))  # over this app's 64 x 64
    assert r.status_code == 415 and "65x64 pixels is over the limit of 4096 pixels" in r.text
    assert holding(folder, bomb) == [] and quota.usage("u2") == (len(good), 1)


def test_each_user_has_a_quota_that_expires(guarded):
    url, folder, quota, clock = guarded
    http = session(url, "u1")
    first, second = noise_png(20, seed=2), noise_png(20, seed=3)  # ~1.2 kB each
    for data in (first, second):
        assert upload(http, "x.png", data).status_code == 200
    used = len(first) + len(second)
    assert quota.usage("u1") == (used, 2)
    # over the bytes quota: refused from the declared size, before anything is stored
    big = noise_png(34, seed=4)  # ~3.5 kB: under the file limit, over what is left of 6000 bytes
    assert len(big) <= GUARD_LIMITS.max_bytes and used + len(big) > GUARD_LIMITS.quota_bytes
    r = upload(http, "big.png", big)
    assert r.status_code == 413 and "quota of 6000 bytes per 1 h" in r.text and f"({used} used)" in r.text
    assert holding(folder, big) == []
    # the third file fits; a fourth is over the count
    third = noise_png(8, seed=5)
    assert upload(http, "c.png", third).status_code == 200
    r = upload(http, "d.png", noise_png(8, seed=6))
    assert r.status_code == 413 and "quota of 3 files" in r.text
    # another user's quota is their own
    assert upload(session(url, "u2"), "e.png", noise_png(8, seed=7)).status_code == 200
    # once the uploads are older than keep_s, they are deleted and stop counting
    kept = [p for d in (first, second, third) for p in holding(folder, d)]
    assert len(kept) == 3
    clock[0] += GUARD_LIMITS.keep_s + 1
    r = upload(http, "big.png", big)
    assert r.status_code == 200, r.text
    assert not any(p.exists() for p in kept) and quota.usage("u1") == (len(big), 1)


def test_quota_counts_requests_under_way_and_shared_files(tmp_path):
    from annotation_app.uploads import QuotaExceeded

    now = [0.0]
    quota = UploadQuota(UploadLimits(max_bytes=100, quota_bytes=150, quota_files=2, keep_s=10), clock=lambda: now[0])
    quota.reserve("u", 100)
    with pytest.raises(QuotaExceeded, match="quota of 150 bytes"):  # the first request is still under way
        quota.reserve("u", 100)
    quota.reserve("v", 100)  # another user's quota is their own
    # two users upload the same content: Gradio stores it once, in one folder named by its hash
    shared = tmp_path / "abc123" / "x.png"
    shared.parent.mkdir()
    shared.write_bytes(b"x" * 80)
    quota.keep("u", 100, [(shared, 80)])
    quota.release("u", 100)
    assert quota.usage("u") == (80, 1)
    now[0] = 5.0
    quota.keep("v", 100, [(shared, 80)])
    quota.release("v", 100)
    with pytest.raises(QuotaExceeded, match="80 used"):
        quota.reserve("u", 71)  # 80 + 71 > 150
    # one request of two files: its size fits, its count does not; nothing of it is kept
    quota.reserve("u", 10)
    with pytest.raises(QuotaExceeded, match="quota of 2 files per"):
        quota.keep("u", 10, [(tmp_path / "y.png", 5), (tmp_path / "z.png", 5)])
    quota.release("u", 10)
    assert quota.usage("u") == (80, 1)
    now[0] = 10.0  # u's upload expires, v's (same file) does not: the file stays
    assert quota.expire() == [] and shared.exists() and quota.usage("u") == (0, 0)
    now[0] = 15.0
    assert quota.expire() == [shared] and not shared.exists() and not shared.parent.exists()
    assert quota.usage("v") == (0, 0)
