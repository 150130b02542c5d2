"""mask_iou against the definition computed on pixel coordinate sets."""

from __future__ import annotations

import numpy as np

from refcoco_edit.imaging.masks import mask_iou


def _set_iou(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(zip(*np.nonzero(a))), set(zip(*np.nonzero(b)))
    return len(sa & sb) / len(sa | sb)


def test_mask_iou_matches_the_set_definition_and_is_none_for_two_empty_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random((9, 7)) > 0.6, (rng.random((9, 7)) > 0.5).astype(np.uint8) * 255  # any nonzero is inside
        assert abs(mask_iou(a, b) - _set_iou(a, b)) < 1e-12
    full, empty = np.ones((4, 4), bool), np.zeros((4, 4), np.uint8)
    assert mask_iou(full, full) == 1.0 and mask_iou(full, empty) == 0.0 and mask_iou(empty, empty) is None
