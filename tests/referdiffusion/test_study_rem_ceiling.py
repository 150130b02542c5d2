"""The REM mask references: a cell's coverage as logits against logits fitted to the object, through the
pipeline's own upsampling and threshold."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from referdiffusion.study.rem_ceiling import ceilings  # noqa: E402


def test_coverage_logits_lose_an_object_across_cell_corners_that_fitted_logits_draw():
    masks = np.zeros((3, 96, 128), bool)  # RefShapes' size; at 64 px the latent cells are 8 x 8 pixels here
    masks[0, 8:24, 16:32] = True  # exactly 2 x 2 cells
    masks[1, 4:12, 4:12] = True  # one cell's area, a quarter in each of four cells
    masks[2, 40:60, 50:90] = True  # larger, off the grid
    got = ceilings(masks, size=64, steps=200)
    assert got["coverage"][0] > 0.9  # the bilinear upsampling rounds its corners
    assert got["coverage"][1] == 0.0  # every cell a quarter covered: under the 0.5 threshold everywhere
    assert got["best"][1] > 0.5  # the bilinear upsampling lets fitted logits draw it
    assert got["coverage"][2] > 0.7 and got["best"][2] >= got["coverage"][2]
    assert np.all(got["best"] >= got["coverage"])  # the fit starts from the coverage and keeps its best


def test_an_object_less_mask_scores_zero():
    got = ceilings(np.zeros((1, 96, 128), bool), size=64, steps=5)
    assert got["coverage"][0] == 0.0 and got["best"][0] == 0.0
