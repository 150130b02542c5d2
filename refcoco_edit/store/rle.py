"""Binary masks <-> COCO RLE in a JSON-safe form (`counts` as a str), the store's mask format.

pycocotools wants a Fortran-ordered uint8 array and returns `counts` as bytes; both details are
handled here so the rest of the store only sees `{"size": [h, w], "counts": "..."}` dicts and
(H, W) uint8 arrays of 0 and 1.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from refcoco_edit.errors import DataError, InputError


def encode(mask: Any) -> dict:
    """Compress a (H, W) mask of 0/1 (or bool) values to `{"size": [h, w], "counts": str}`."""
    from pycocotools import mask as mask_utils

    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"a mask must be 2-D, got shape {m.shape}")
    if m.dtype != np.bool_:
        if m.size and not np.isin(m, (0, 1)).all():
            raise InputError("a mask must hold only 0 and 1 (use mask > 0 to binarise a 0/255 mask)")
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict) -> np.ndarray:
    """The (H, W) uint8 mask of 0 and 1 that an `encode` result stands for (C-ordered).

    Decoded by `refer.decode_segmentation`, which checks that the runs cover exactly H*W pixels:
    pycocotools itself would leave the pixels past short runs as uninitialised memory.
    """
    from refcoco_edit.refer.reader import decode_segmentation

    try:
        h, w = (int(v) for v in rle["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"not a COCO RLE mask: {exc}") from None
    return decode_segmentation(rle, h, w, "not a COCO RLE mask")


def to_json(mask: Any | None) -> str | None:
    """The column text for a mask (None stays None: drafts may lack masks)."""
    return None if mask is None else json.dumps(encode(mask), separators=(",", ":"))


def from_json(text: str | None) -> np.ndarray | None:
    return None if text is None else decode(json.loads(text))
