"""Checked uploads: example images for the composition pipeline (and study images).

An upload reaches a handler as the path of the file Gradio wrote to its upload folder; the browser
never names a path of its own (Gradio refuses payload paths outside its folder, and `read_upload`
checks again that the file lies inside the folder it was given). The file is then:

1. checked for size on disk (`max_bytes`) before it is read, and read with that bound;
2. recognised by its first bytes, not its name: PNG, JPEG or WebP only;
3. opened with only that decoder, its pixel count checked against `max_pixels` *before* decoding
   (a small PNG can claim 100 000 x 100 000 pixels: a decompression bomb), then decoded with
   Pillow's bomb warning turned into an error;
4. converted to RGB (transparent pixels on black, as the pipelines do) and stored as a lossless PNG
   in the store's own folder, `<store>.uploads/`, content-addressed like the store's images.

Only the resulting hash travels in the session; the file the browser sent is not kept by the app.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from pathlib import Path
from typing import Any

from annotation_app.errors import UploadError

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # 20 MiB: a 4K photo as JPEG or PNG fits
MAX_UPLOAD_PIXELS = 4096 * 4096  # 16.8 M pixels: far above COCO's 640 x 640
# Magic numbers -> Pillow format names. WebP is RIFF....WEBP.
FORMATS = ("PNG", "JPEG", "WEBP")


def sniff_format(head: bytes) -> str | None:
    """The image format the first bytes announce, or None when it is not one we accept."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, *, name: str = "upload", max_pixels: int = MAX_UPLOAD_PIXELS):
    """Bytes of a PNG, JPEG or WebP -> an RGB PIL image, refusing other types and bombs."""
    from PIL import Image

    fmt = sniff_format(data[:16])
    if fmt is None:
        raise UploadError(f"{name}: not a PNG, JPEG or WebP image (the file's first bytes say otherwise)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = im.size
            if w < 1 or h < 1 or w * h > max_pixels:
                raise UploadError(f"{name}: an image of {w}x{h} pixels is over the limit of {max_pixels} pixels")
            if getattr(im, "n_frames", 1) > 1:
                raise UploadError(f"{name}: animated images are not accepted")
            im.load()
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(f"{name}: refused, image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UploadError(f"{name}: not a readable {fmt} image: {exc}") from None
    return to_rgb(im)


def to_rgb(im):
    from PIL import Image

    if im.mode == "RGB":
        return im
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def read_upload(path: str | os.PathLike, *, upload_root: str | os.PathLike | None,
                max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS):
    """The checked RGB image of an uploaded file (see the module docstring).

    `upload_root`: the folder uploads must lie in (Gradio's upload folder); None only for files an
    admin names on the command line.
    """
    if path is None or str(path) == "":
        raise UploadError("no file was uploaded")
    p = Path(path)
    name = p.name or "upload"
    try:
        real = p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise UploadError(f"{name}: the uploaded file is gone; upload it again") from None
    if upload_root is not None:
        root = Path(upload_root).resolve()
        if not real.is_relative_to(root):
            raise UploadError(f"{name}: refused, the file is not an upload")
    st = real.stat()
    if not stat.S_ISREG(st.st_mode):
        raise UploadError(f"{name}: not a regular file")
    if st.st_size > max_bytes:
        raise UploadError(f"{name}: {st.st_size} bytes is over the upload limit of {max_bytes} bytes")
    with open(real, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadError(f"{name}: over the upload limit of {max_bytes} bytes")
    if not data:
        raise UploadError(f"{name}: the file is empty")
    return decode_image(data, name=name, max_pixels=max_pixels)


class UploadStore:
    """Checked images kept in `<store>.uploads/`, named by the hash of their pixels."""

    def __init__(self, store_path: str | os.PathLike) -> None:
        from refcoco_edit.store import BlobStore

        self.root = Path(f"{store_path}.uploads")
        self.blobs = BlobStore(self.root)
        self.blobs.ensure()

    def put(self, image: Any) -> str:
        return self.blobs.put(to_rgb(image))

    def get(self, digest: str):
        from refcoco_edit.errors import DataError

        try:
            return self.blobs.get(digest)
        except DataError:
            raise UploadError("the example image is no longer stored; upload it again") from None

    def add_file(self, path: str | os.PathLike, *, upload_root: str | os.PathLike | None,
                 max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS) -> tuple[str, Any]:
        """Check an uploaded file, store it; (hash, RGB image)."""
        image = read_upload(path, upload_root=upload_root, max_bytes=max_bytes, max_pixels=max_pixels)
        return self.put(image), image
