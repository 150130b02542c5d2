"""Edit localisation: does the area the method changed fall on the edit mask M_e?

The changed-pixel mask C marks the pixels where the output (at the source's size) differs from the
source by more than `threshold` in at least one channel, in [0, 1] units:
C = max_c |output_c - source_c| > threshold. It is compared with M_e:

- `loc_precision` = |C and M_e| / |C|: how much of what changed lies on the edit area. A method that
  changed nothing gets 0 (doing nothing must not score as a perfectly placed edit).
- `loc_recall` = |C and M_e| / |M_e|: how much of the edit area changed; an identity output gets 0.
  No value for an empty M_e.
- `loc_iou` = |C and M_e| / |C or M_e|. No value when both are empty.

All three are higher-is-better. One metric, `localisation`, produces the three results, because
they share the changed-pixel mask.

Default threshold 0.1 (about 26 grey levels of 255). Every latent-diffusion method re-encodes the
whole picture through a VAE and most outputs are resized or re-quantised; those round trips move
natural-image pixels by a few to about fifteen grey levels, more only on fine texture, and a
threshold below that would mark the whole background as "changed" for every method. A semantic
edit (a new object, a colour change, a removal) changes pixels by far more than 0.1. The threshold
is an option (`threshold=`) for stricter or looser runs; report it with the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.metrics.base import Metric, MetricInput, as_binary_mask, as_rgb_image, stacked_groups

DEFAULT_THRESHOLD = 0.1
OUTPUTS = ("loc_precision", "loc_recall", "loc_iou")


def changed_mask_stack(outputs: np.ndarray, sources: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """N x H x W bool: max channel |output - source| > threshold (in [0, 1] units)."""
    diff = np.maximum(outputs, sources)
    diff -= np.minimum(outputs, sources)  # uint8 |a - b|
    largest = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])
    return largest > threshold * 255.0


def localisation_stack(
    outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, np.ndarray]:
    """Per image precision, recall and IoU of the changed mask against M_e (NaN: not defined)."""
    changed = changed_mask_stack(outputs, sources, threshold)
    edit = masks.astype(bool)
    n = len(changed)
    tp = (changed & edit).reshape(n, -1).sum(axis=1).astype(np.float64)
    n_changed = changed.reshape(n, -1).sum(axis=1).astype(np.float64)
    n_edit = edit.reshape(n, -1).sum(axis=1).astype(np.float64)
    union = n_changed + n_edit - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_changed > 0, tp / n_changed, 0.0)
        recall = np.where(n_edit > 0, tp / n_edit, np.nan)
        iou = np.where(union > 0, tp / union, np.nan)
    return {"loc_precision": precision, "loc_recall": recall, "loc_iou": iou}


def changed_mask(output: Any, source: Any, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """HxW uint8 0/1 changed-pixel mask of one output (resized bicubic to the source's size)."""
    from PIL import Image

    src = as_rgb_image(source, "source image")
    out = as_rgb_image(output, "output image")
    if out.size != src.size:
        out = out.resize(src.size, Image.BICUBIC)
    return changed_mask_stack(np.asarray(out)[None], np.asarray(src)[None], threshold)[0].astype(np.uint8)


def localisation(
    output: Any, source: Any, edit_mask: Any, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, float | None]:
    """{"loc_precision", "loc_recall", "loc_iou"} for one output; None where not defined."""
    src = as_rgb_image(source, "source image")
    sample = MetricInput(output=output, source=src, edit_mask=as_binary_mask(edit_mask, (src.height, src.width)))
    scores = localisation_stack(sample.output_array[None], sample.source_array[None], sample.edit_mask[None], threshold)
    return {k: (None if np.isnan(v[0]) else float(v[0])) for k, v in scores.items()}


class Localisation(Metric):
    name = "localisation"
    outputs = OUTPUTS
    higher_is_better = True
    description = "changed-pixel mask (max channel diff > threshold) vs the edit mask: precision, recall, IoU"
    empty_reason = "no sample has a non-empty edit mask"

    def __init__(self, *, threshold: float = DEFAULT_THRESHOLD, chunk_size: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"localisation threshold must be in [0, 1), got {threshold}")
        self.threshold = threshold
        self.chunk_size = chunk_size

    def score_batch(self, batch: Sequence[MetricInput]) -> dict[str, list[float | None]]:
        values = {k: np.full(len(batch), np.nan) for k in OUTPUTS}
        for idx, outputs, sources, masks in stacked_groups(batch, self.chunk_size):
            for k, v in localisation_stack(outputs, sources, masks, self.threshold).items():
                values[k][idx] = v
        return {k: [None if np.isnan(x) else float(x) for x in v] for k, v in values.items()}
