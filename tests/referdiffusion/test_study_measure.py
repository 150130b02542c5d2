"""Study measures against independent computations: scikit-image PSNR, per-pixel loops, scipy's bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from refcoco_edit.errors import InputError
from referdiffusion.study.measure import PSNR_CAP, bg_psnr, bootstrap_ci, fg_agreement, fg_psnr, psnr


def _images(n=4, h=6, w=5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, size=a.shape), 0, 255).astype(np.uint8)
    masks = rng.random((n, h, w)) < 0.4
    return a, b, masks


def test_psnr_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    a, b, _ = _images()
    ours = psnr(a, b)
    ref = [skm.peak_signal_noise_ratio(b[i], a[i], data_range=255) for i in range(len(a))]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_masked_psnr_matches_a_pixel_loop_and_caps_identical_images():
    a, b, m = _images(seed=1)
    ours = psnr(a, b, m)
    for i in range(len(a)):
        diffs = [float(np.mean((a[i, y, x].astype(float) - b[i, y, x].astype(float)) ** 2))
                 for y in range(a.shape[1]) for x in range(a.shape[2]) if m[i, y, x]]
        assert ours[i] == pytest.approx(10 * np.log10(255**2 / np.mean(diffs)), rel=1e-10)
    assert psnr(a, a)[0] == PSNR_CAP
    assert np.isnan(psnr(a, b, np.zeros(a.shape[:3], bool))).all()


def test_fg_agreement_matches_a_pixel_loop():
    a, b, m = _images(seed=2)
    for tol in (0, 10, 32):
        ours = fg_agreement(a, b, m, tol=tol)
        for i in range(len(a)):
            ok = [all(abs(int(a[i, y, x, c]) - int(b[i, y, x, c])) <= tol for c in range(3))
                  for y in range(a.shape[1]) for x in range(a.shape[2]) if m[i, y, x]]
            assert ours[i] == pytest.approx(sum(ok) / len(ok))


def test_foreground_and_background_scores_tell_a_good_edit_from_identity():
    rng = np.random.default_rng(3)
    source = rng.integers(100, 140, size=(8, 8, 3), dtype=np.uint8)
    me = np.zeros((8, 8), bool)
    me[2:5, 2:6] = True
    reference = source.copy()
    reference[me] = (215, 38, 38)
    assert fg_agreement(reference, reference, me)[0] == 1.0
    assert fg_agreement(source, reference, me)[0] == 0.0
    assert fg_psnr(reference, reference, me)[0] == PSNR_CAP
    assert bg_psnr(source, source, me)[0] == PSNR_CAP  # identity leaves the background alone
    bad = reference.copy()
    bad[0, 0] = 0
    assert bg_psnr(bad, source, me)[0] < 40


def test_bootstrap_interval_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(4).normal(0.3, 1.0, size=400)
    ours = bootstrap_ci(x, n_boot=4000, seed=0)
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert ours.value == pytest.approx(x.mean())
    assert ours.low == pytest.approx(ref.low, abs=0.01)
    assert ours.high == pytest.approx(ref.high, abs=0.01)
    assert ours.low < ours.value < ours.high and ours.n == 400


def test_bootstrap_is_seeded_and_ignores_nans():
    x = np.array([1.0, 2.0, np.nan, 4.0, 8.0])
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x).n == 4


def test_bad_inputs_are_named():
    a, b, m = _images()
    with pytest.raises(InputError, match="differ in shape"):
        psnr(a, b[:, :-1])
    with pytest.raises(InputError, match="mask"):
        fg_agreement(a, b, m[:, :-1])
    with pytest.raises(InputError, match="finite"):
        bootstrap_ci([np.nan])
