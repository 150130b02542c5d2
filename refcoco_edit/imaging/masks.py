"""Binary masks on disk: 8-bit PNG files of 0 and 255, the form every tool can open."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refcoco_edit.errors import InputError


def save_mask_png(mask: np.ndarray, path: Path | str) -> Path:
    """Write a (H, W) mask (any non-zero is inside) as an 8-bit PNG of 0 and 255."""
    from PIL import Image

    if mask.ndim != 2:
        raise InputError(f"a mask must be 2-D, got shape {mask.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), mode="L").save(path)
    return path


def load_mask_png(path: Path | str) -> np.ndarray:
    """Read a mask image as a (H, W) uint8 array of 0 and 1 (pixels above 127 are inside)."""
    from refcoco_edit.imaging.files import open_image

    return (np.asarray(open_image(path, mode="L")) > 127).astype(np.uint8)
