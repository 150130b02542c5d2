"""The study's measures: PSNR, the exact foreground metric, and bootstrap confidence intervals.

RefShapes edits are fully specified: inside the edit mask M_e the reference edit I_e says exactly what
every pixel should become (background where an object was removed, the new flat colour where one was
painted). So the foreground is scored against I_e directly, instead of by a CLIP similarity to the edit
text as for photographs:

- `fg_agreement`: the share of M_e's pixels where the output matches I_e within `tol` levels on every
  channel. `tol` = 32 (of 255) sits far below the smallest distance between two RefShapes colours (87,
  red vs orange) and between a colour and the near-grey backgrounds, yet above the blur a small VAE
  leaves at an edge pixel, so it counts right colours, not exact bytes;
- `fg_psnr`: the PSNR of the output against I_e over M_e's pixels, the same without a threshold.

All functions take uint8 H x W x 3 images (or N of them) and boolean H x W masks, and work per sample;
`bootstrap_ci` turns per-sample values into a mean with a percentile 95% interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from refcoco_edit.errors import InputError

DATA_RANGE = 255.0
FG_TOLERANCE = 32
# PSNR of identical pixels: a finite cap, so that means and intervals stay finite
PSNR_CAP = 100.0


def _batch(images: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise InputError(f"{what}: expected H x W x C or N x H x W x C, got shape {arr.shape}")
    return arr


def _masks(mask: np.ndarray | None, shape: tuple[int, ...], what: str) -> np.ndarray:
    n, h, w = shape[:3]
    if mask is None:
        return np.ones((n, h, w), dtype=bool)
    m = np.asarray(mask).astype(bool)
    if m.ndim == 2:
        m = np.broadcast_to(m, (n, h, w))
    if m.shape != (n, h, w):
        raise InputError(f"{what}: mask of shape {np.asarray(mask).shape} does not fit images of shape {shape}")
    return m


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _batch(a, "output"), _batch(b, "reference")
    if a.shape != b.shape:
        raise InputError(f"output {a.shape} and reference {b.shape} differ in shape")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(output: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
         data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-image PSNR in dB over the pixels of `mask` (all pixels without one), all channels.

    An image whose mask is empty gets NaN (nothing to score); identical pixels get `PSNR_CAP`.
    """
    a, b = _pair(output, reference)
    m = _masks(mask, a.shape, "psnr")
    sq = ((a - b) ** 2).mean(axis=3)  # per pixel, mean over channels
    count = m.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = np.where(m, sq, 0.0).sum(axis=(1, 2)) / count
        out = 10.0 * np.log10(data_range**2 / mse)
    out = np.where(mse == 0, PSNR_CAP, np.minimum(out, PSNR_CAP))
    return np.where(count == 0, np.nan, out)


def fg_agreement(output: np.ndarray, reference: np.ndarray, edit_mask: np.ndarray,
                 tol: int = FG_TOLERANCE) -> np.ndarray:
    """Per-image share of M_e's pixels where every channel of the output is within `tol` of I_e.

    NaN where M_e is empty.
    """
    if tol < 0:
        raise InputError(f"tolerance must be non-negative, got {tol}")
    a, b = _pair(output, reference)
    m = _masks(edit_mask, a.shape, "fg_agreement")
    ok = (np.abs(a - b) <= tol).all(axis=3)
    count = m.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (ok & m).sum(axis=(1, 2)) / count
    return np.where(count == 0, np.nan, share)


def fg_psnr(output: np.ndarray, reference: np.ndarray, edit_mask: np.ndarray) -> np.ndarray:
    """Per-image PSNR of the output against I_e inside M_e."""
    return psnr(output, reference, edit_mask)


def bg_psnr(output: np.ndarray, source: np.ndarray, edit_mask: np.ndarray) -> np.ndarray:
    """Per-image PSNR of the output against the source outside M_e (what an edit must leave alone)."""
    m = ~_masks(edit_mask, _batch(output, "output").shape, "bg_psnr")
    return psnr(output, source, m)


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval, and the number of samples behind it."""

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_ci(values: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0,
                 statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> Interval:
    """The statistic (mean by default) of the finite values, with a percentile bootstrap interval.

    Resamples are drawn with `seed`, so the same values give the same interval. `statistic` maps an
    R x n array of resamples to R values (vectorised, as `np.mean(x, axis=1)`).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise InputError("bootstrap_ci needs at least one finite value")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    stat = statistic or (lambda r: r.mean(axis=1))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # chunks bound the memory of R x n resamples
        k = min(256, n_boot - start)
        boots[start:start + k] = stat(x[rng.integers(0, x.size, size=(k, x.size))])
    tail = (1 - confidence) / 2
    low, high = np.quantile(boots, [tail, 1 - tail])
    return Interval(float(stat(x[None])[0]), float(low), float(high), int(x.size))
