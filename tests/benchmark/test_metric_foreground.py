"""fg_agreement / psnr_fg against the RefShapes study's own measure (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.metrics import MetricInput, create_metric
from benchmark.metrics.foreground import foreground_scores
from refcoco_edit.errors import InputError
from referdiffusion.study import measure


def _case(seed: int, h: int = 24, w: int = 32):
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    output = np.clip(reference.astype(int) + rng.integers(-60, 61, (h, w, 3)), 0, 255).astype(np.uint8)
    mask = (rng.random((h, w)) < 0.3).astype(np.uint8)
    return output, reference, mask


@pytest.mark.parametrize("seed", range(5))
def test_equals_the_study_measure(seed):
    output, reference, mask = _case(seed)
    agreement, psnr = foreground_scores(output, reference, mask)
    assert agreement == pytest.approx(float(measure.fg_agreement(output, reference, mask)[0]), abs=1e-12)
    assert psnr == pytest.approx(float(measure.fg_psnr(output, reference, mask)[0]), abs=1e-9)
    assert 0 < agreement < 1


def test_metric_reads_the_reference_and_skips_what_it_cannot_score():
    output, reference, mask = _case(7)
    metric = create_metric("fg_agreement", n_resamples=50)
    got = metric.update([
        MetricInput(output=output, source=output, edit_mask=mask, reference=reference),
        MetricInput(output=reference, source=output, edit_mask=mask, reference=reference),  # the reference itself
        MetricInput(output=output, source=output, edit_mask=mask),  # no reference
        MetricInput(output=output, source=output, edit_mask=np.zeros_like(mask), reference=reference),
    ])
    assert got["fg_agreement"][0] == pytest.approx(foreground_scores(output, reference, mask)[0])
    assert got["fg_agreement"][1] == 1.0 and got["psnr_fg"][1] == 100.0
    assert got["fg_agreement"][2:] == [None, None] and got["psnr_fg"][2:] == [None, None]
    result = metric.compute()["fg_agreement"]
    assert result.n == 2 and result.value == pytest.approx((got["fg_agreement"][0] + 1.0) / 2)


def test_tolerance_counts_levels_and_is_checked():
    reference = np.full((4, 4, 3), 100, np.uint8)
    output = reference.copy()
    output[0, :, 1] = 132  # 32 levels off: agrees at the default tolerance
    output[1, :, 2] = 133  # 33 off: does not
    mask = np.ones((4, 4), np.uint8)
    assert foreground_scores(output, reference, mask)[0] == 0.75
    assert foreground_scores(output, reference, mask, tolerance=40)[0] == 1.0
    with pytest.raises(InputError, match="tolerance"):
        create_metric("fg_agreement", tolerance=300)
    with pytest.raises(InputError, match="reference edit"):
        MetricInput(output=output, source=output, edit_mask=mask, reference=np.zeros((5, 4, 3), np.uint8))
