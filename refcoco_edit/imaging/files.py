"""Opening images safely: one place that turns unreadable, truncated or oversized files into clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path

from refcoco_edit.errors import DataError

# 8192 x 8192: far above any COCO image (640 x 640) and small enough that a decompression bomb is
# refused before it is decoded.
MAX_PIXELS = 8192 * 8192


def open_image(path: Path | str, *, mode: str = "RGB", max_pixels: int = MAX_PIXELS):
    """Open `path` with Pillow, check its size before decoding, and return it converted to `mode`."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DataError(f"{path}: image of {w}x{h} pixels is over the limit of {max_pixels} pixels")
                im.load()
                return im.convert(mode)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused, image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image: {exc}") from None
