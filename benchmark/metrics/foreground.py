"""Foreground agreement with the reference edit: fg_agreement and psnr_fg, over the pixels of M_e.

Where a dataset's edits are fully specified (RefShapes: a removed object becomes the known background, a
recoloured or replaced one a known flat colour), the reference edit I_e says what every pixel of M_e
should become, and the foreground can be scored against it exactly instead of by a CLIP similarity to the
edit text. On photographs I_e is one good edit among many, so there these numbers measure agreement with
the dataset's edit, not quality.

- `fg_agreement`: the share of M_e's pixels where the output is within `tolerance` levels (of 255) of I_e
  on every channel. The default 32 lies far below the distance between any two RefShapes colours (the
  closest pair, red and orange, is 87 apart) and between a colour and the near-grey backgrounds, and above
  the blur a small VAE leaves on an edge pixel: it counts right colours, not exact bytes. Higher is better.
- `psnr_fg`: PSNR of the output against I_e over M_e's pixels (all channels), capped at 100 dB.

The output is read at the source's size (`MetricInput.output_array`). A sample without a reference edit
or with an empty M_e gets no value (None).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmark.metrics.background import DEFAULT_MAX_DB, psnr_from_mse
from benchmark.metrics.base import Metric, MetricInput
from refcoco_edit.errors import InputError

DEFAULT_TOLERANCE = 32


def foreground_scores(output: np.ndarray, reference: np.ndarray, edit_mask: np.ndarray,
                      tolerance: int = DEFAULT_TOLERANCE, max_db: float = DEFAULT_MAX_DB) -> tuple[float, float]:
    """(fg_agreement, psnr_fg) of one HxWx3 uint8 output against the reference inside the HxW 0/1 mask;
    (nan, nan) for an empty mask."""
    inside = edit_mask.astype(bool)
    n = int(inside.sum())
    if n == 0:
        return float("nan"), float("nan")
    diff = np.abs(output.astype(np.int16) - reference.astype(np.int16))[inside]  # n x 3
    agreement = float((diff <= tolerance).all(axis=1).mean())
    mse = float((diff.astype(np.float64) ** 2).mean()) / (255.0 * 255.0)
    return agreement, float(psnr_from_mse(mse, max_db))


class ForegroundAgreement(Metric):
    name = "fg_agreement"
    outputs = ("fg_agreement", "psnr_fg")
    higher_is_better = True
    description = "agreement of the output with the reference edit inside M_e (exact on synthetic edits)"
    empty_reason = "no sample with a reference edit and a non-empty edit mask"

    def __init__(self, *, tolerance: int = DEFAULT_TOLERANCE, **kwargs) -> None:
        if not 0 <= int(tolerance) <= 255:
            raise InputError(f"fg_agreement: tolerance must be in [0, 255], got {tolerance}")
        self.tolerance = int(tolerance)
        super().__init__(**kwargs)

    def score_batch(self, batch: Sequence[MetricInput]) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {k: [] for k in self.outputs}
        for s in batch:
            ref = s.reference_array
            a, p = (float("nan"), float("nan")) if ref is None else foreground_scores(
                s.output_array, ref, s.edit_mask, self.tolerance)
            out["fg_agreement"].append(None if np.isnan(a) else a)
            out["psnr_fg"].append(None if np.isnan(p) else p)
        return out
