"""Opening files that other people wrote, safely: the one place that holds the toolkit's pixel limit
and the one rule for paths that such files name.

Every image the project opens from a file or from bytes someone else wrote (datasets, store blobs,
dumps, uploads, run outputs) goes through `open_image`, so a decompression bomb or a 12000x9000 PNG
of a few hundred kilobytes is refused from its header, before a pixel is decoded, with the file named.

Every path read from such a file (a run folder's samples.jsonl, a submission's links, a dataset's
image cells) goes through `inside`, so that `../../etc/passwd`, an absolute path or a symlink can
never make a leaderboard, a scorer or a loader read a file outside the folder it was given.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from refcoco_edit.errors import DataError

if TYPE_CHECKING:
    from PIL.Image import Image

# 8192 x 8192: far above any COCO image (640 x 640) and small enough that a decompression bomb is
# refused before it is decoded.
MAX_PIXELS = 8192 * 8192


class OutsideFolderError(DataError):
    """A path read from an untrusted file leads outside the folder it must stay in."""


def inside(root: Path | str, relative: Path | str, *, what: str | None = None) -> Path:
    """The real path of `relative` (relative to `root`, or absolute) once symlinks and '..' are resolved,
    refused with `OutsideFolderError` unless it lies inside `root` (itself resolved).

    `what` names whose path it is in the error (a run and a sample, a submission file). The file need
    not exist; a link in it that points outside is refused whether or not its target exists.
    """
    label = f"{what}: " if what else ""
    if not isinstance(relative, (str, os.PathLike)) or not str(relative):
        raise DataError(f"{label}{relative!r} is not a file path")
    try:
        base = Path(root).resolve()
        target = (base / relative).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop, a NUL byte
        raise DataError(f"{label}path {str(relative)!r} cannot be resolved: {exc}") from None
    if not target.is_relative_to(base):
        raise OutsideFolderError(f"{label}path {str(relative)!r} leads outside {root} (to {target}); refused: "
                                 "only files inside the folder are read")
    return target


def check_pixels(width: int, height: int, what: str, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a `width` x `height` picture over the pixel limit, naming `what`."""
    if width * height > max_pixels:
        raise DataError(f"{what}: image of {width}x{height} pixels is over the limit of {max_pixels} pixels")


def open_image(source: Path | str | bytes, *, what: str | None = None, mode: str | None = "RGB",
               max_pixels: int = MAX_PIXELS, load: bool = True, formats: list[str] | None = None) -> Image:
    """Open a file path or encoded bytes with Pillow, check the size from the header, then decode.

    `what` names the source in errors (default: the path); `mode=None` keeps the stored mode;
    `load=False` returns the image with only its header read (size and mode known, pixels decoded
    on first use, still within the limit); `formats` restricts the decoders Pillow may try.
    """
    from PIL import Image

    if isinstance(source, (bytes, bytearray, memoryview)):
        name = what or "image bytes"
        fp: Path | io.BytesIO = io.BytesIO(bytes(source))
    else:
        fp = Path(source)
        name = what or str(fp)
        if not fp.is_file():
            raise DataError(f"image not found: {fp}" if what is None else f"{name}: image not found: {fp}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=formats)
            try:
                check_pixels(*im.size, name, max_pixels)
                if load:
                    im.load()
            except BaseException:
                im.close()
                raise
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name}: image over the pixel limit, refused before decoding ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{name}: not a readable image: {exc}") from None
    if not load or mode is None or im.mode == mode:
        return im
    converted = im.convert(mode)
    im.close()
    return converted


def check_whole(
    path: Path | str, *, what: str | None = None, formats: list[str] | None = None
) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) of an image file that is whole: within the pixel limit, chunk checksums
    right (Pillow's verify) and decoding to the end (verify alone passes a file whose data ends early).
    Raises DataError naming `what` otherwise."""
    name = what or str(path)
    try:
        with open_image(path, what=what, mode=None, load=False, formats=formats) as im:
            mode, size = im.mode, im.size
            im.verify()
        with open_image(path, what=what, mode=None, load=False, formats=formats) as im:
            im.load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to check or decode means the file is not whole
        raise DataError(f"{name}: not a readable image: {type(exc).__name__}: {exc}") from None
    return mode, size
