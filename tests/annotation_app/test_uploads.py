"""Checked uploads: types by content, size limits, decompression bombs, paths outside the upload folder."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from annotation_app.errors import UploadError
from annotation_app.handlers import annotate as A
from annotation_app.uploads import UploadStore, decode_image, read_upload, sniff_format


def png_bytes(w: int, h: int, colour=(1, 2, 3), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header that claims w x h grey pixels, with a tiny compressed body (a bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * w
    body = zlib.compress(row * 4, 9)  # far too short for h rows: never decoded anyway
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


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
    with pytest.raises(UploadError, match="not a readable PNG"):
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
    (root / "bomb1.png").write_bytes(bomb_png(5000, 5000))  # 25 M pixels, over our 16.8 M
    with pytest.raises(UploadError, match="5000x5000 pixels is over the limit"):
        read_upload(root / "bomb1.png", upload_root=root)
    data = bomb_png(100_000, 100_000)
    assert len(data) < 1000  # a few hundred bytes claiming 10 G pixels
    (root / "bomb2.png").write_bytes(data)
    with pytest.raises(UploadError, match="too large"):  # Pillow refuses it on open
        read_upload(root / "bomb2.png", upload_root=root)
    # past a (too) generous limit of ours, Pillow's bomb warning is an error too
    with pytest.raises(UploadError, match="too large"):
        decode_image(bomb_png(10_000, 10_000), max_pixels=10**12)


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
    (root / "bomb.png").write_bytes(bomb_png(50_000, 50_000))
    with pytest.raises(UploadError):
        A.use_upload(ctx, "ann1", st, str(root / "bomb.png"), upload_root=root)
    assert st.example_hash is None
    assert list(ctx.uploads.root.rglob("*.png")) == []
