"""How much a browser may send the app in one picture, checked on the server before it is decoded.

The brush editors are the app's image inputs: the page sends their background, paint layers and
composite as PNG files (or as blobs uploaded one by one before the event). Nothing in the page
limits their number or size, so a signed-in user could send thousands of layers, or one picture of
a hundred million pixels, and fill the server's memory. Every editor value is therefore checked
here, from the files' headers, before Gradio or a handler decodes it: at most `MAX_EDITOR_LAYERS`
layers, each picture at most `MAX_EDITOR_SIDE` pixels a side, `MAX_EDITOR_PIXELS` pixels and
`MAX_EDITOR_BYTES` bytes. Uploaded pictures go through `uploads.UploadStore` (its own type and size
checks); both use `refcoco_edit.imaging.files` for the pixel check, the project's one place for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from annotation_app.errors import UploadError
from refcoco_edit.errors import DataError
from refcoco_edit.imaging.files import MAX_PIXELS, check_pixels, open_image

# The editors show one image (COCO pictures are at most 640 px a side) and paint on one layer.
MAX_EDITOR_LAYERS = 4
MAX_EDITOR_SIDE = 4096
MAX_EDITOR_PIXELS = min(MAX_PIXELS, 2048 * 2048)
MAX_EDITOR_BYTES = 8 * 1024 * 1024
# Editor values sent in pieces (blobs) and not yet used by an event, kept per editor.
MAX_PENDING_EDITS = 32
EDITOR_FORMATS = ["PNG", "JPEG", "WEBP"]


def check_editor_picture(source: bytes | str | os.PathLike, what: str) -> tuple[int, int]:
    """The (width, height) of one picture of an editor value, read from its header; `UploadError`
    naming `what` when it is too big, in bytes or pixels, or not a PNG, JPEG or WebP."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
    else:
        try:
            size = Path(source).stat().st_size
        except OSError as exc:
            raise UploadError(f"{what}: cannot be read: {exc}") from None
    if size > MAX_EDITOR_BYTES:
        raise UploadError(f"{what}: {size} bytes is over the limit of {MAX_EDITOR_BYTES} bytes")
    try:
        im = open_image(source if isinstance(source, (bytes, bytearray, memoryview)) else Path(source), what=what,
                        mode=None, max_pixels=MAX_EDITOR_PIXELS, load=False, formats=EDITOR_FORMATS)
    except DataError as exc:
        raise UploadError(str(exc)) from None
    try:
        width, height = im.size
    finally:
        im.close()
    if max(width, height) > MAX_EDITOR_SIDE:
        raise UploadError(f"{what}: {width}x{height} pixels is over the limit of {MAX_EDITOR_SIDE} pixels a side")
    return width, height


def check_layer_count(n: int, what: str = "editor value") -> None:
    if n > MAX_EDITOR_LAYERS:
        raise UploadError(f"{what}: {n} layers is over the limit of {MAX_EDITOR_LAYERS}")


def check_layer_index(index: int | None, what: str = "editor layer") -> None:
    """A layer sent on its own says its position; refuse one past the limit (Gradio would make a
    list that long to hold it)."""
    if index is not None and not 0 <= index < MAX_EDITOR_LAYERS:
        raise UploadError(f"{what}: layer number {index} is outside 0..{MAX_EDITOR_LAYERS - 1}")


def check_editor_files(background: Any, layers: list[Any] | None, composite: Any, what: str) -> None:
    """Check every picture of an editor value given as files or bytes (None entries are skipped)."""
    layers = list(layers or [])
    check_layer_count(len(layers), what)
    for name, item in [("background", background), *((f"layer {i + 1}", x) for i, x in enumerate(layers)),
                       ("composite", composite)]:
        if item is None:
            continue
        path = getattr(item, "path", item)
        check_editor_picture(path, f"{what} {name}")


def check_decoded_layers(layers: list[Any], what: str = "editor value") -> None:
    """The same limits for layers already decoded (PIL images or arrays), as a handler gets them."""
    import numpy as np

    check_layer_count(len(layers), what)
    for i, lay in enumerate(layers):
        shape = np.shape(lay) if not hasattr(lay, "size") or isinstance(lay, np.ndarray) else lay.size[::-1]
        if len(shape) < 2:
            raise UploadError(f"{what} layer {i + 1}: not a picture")
        height, width = int(shape[0]), int(shape[1])
        try:
            check_pixels(width, height, f"{what} layer {i + 1}", MAX_EDITOR_PIXELS)
        except DataError as exc:
            raise UploadError(str(exc)) from None
        if max(width, height) > MAX_EDITOR_SIDE:
            raise UploadError(f"{what} layer {i + 1}: {width}x{height} pixels is over the limit of "
                              f"{MAX_EDITOR_SIDE} pixels a side")
