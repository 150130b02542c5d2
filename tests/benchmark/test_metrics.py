"""Benchmark metrics against independent references (MagicBrush's L2, scikit-image's SSIM,
torchmetrics' CLIPScore, LAION's head written out by hand) and their edge cases."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.metrics import MetricInput, bootstrap_ci, create_metric, create_metrics, results_to_dict
from benchmark.metrics.background import l2_bg, psnr_bg, ssim_bg
from benchmark.metrics.localisation import changed_mask, localisation
from benchmark.metrics.registry import canonical_name, parse_metric_list
from benchmark.metrics.stats import group_summaries
from refcoco_edit.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def rand_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def box_mask(h: int, w: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[top:bottom, left:right] = 1
    return m


def sample(output, source, mask, **kw) -> MetricInput:
    return MetricInput(output=output, source=source, edit_mask=mask, **kw)


# ---------------------------------------------------------------------------------------------
# independent references


def magicbrush_l2(gen: Image.Image, gt: Image.Image) -> float:
    """MagicBrush's eval_distance(metric='l2') for one pair: resize the generated image to the gt's
    size (Pillow's default resampling), ToTensor both (uint8 / 255, CxHxW), nn.MSELoss."""
    import torch

    gen = gen.convert("RGB").resize(gt.size)
    a = torch.tensor(np.array(gen), dtype=torch.float32).permute(2, 0, 1) / 255.0
    b = torch.tensor(np.array(gt.convert("RGB")), dtype=torch.float32).permute(2, 0, 1) / 255.0
    return float(torch.nn.MSELoss()(a, b))


def numpy_masked_mse(out: np.ndarray, src: np.ndarray, mask: np.ndarray) -> float:
    a, b = out.astype(np.float64) / 255.0, src.astype(np.float64) / 255.0
    bg = mask == 0
    return float(((a - b) ** 2)[bg].mean())


def numpy_ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Wang et al.'s SSIM map, per channel, valid 11x11 Gaussian windows (sigma 1.5), written
    with explicit windows (sliding_window_view) and float64."""
    from numpy.lib.stride_tricks import sliding_window_view

    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g)
    win /= win.sum()
    c1, c2 = 0.01**2, 0.03**2
    maps = []
    for c in range(3):
        xw = sliding_window_view(x[..., c], (11, 11))
        yw = sliding_window_view(y[..., c], (11, 11))
        mx = (xw * win).sum(axis=(-1, -2))
        my = (yw * win).sum(axis=(-1, -2))
        vx = ((xw - mx[..., None, None]) ** 2 * win).sum(axis=(-1, -2))
        vy = ((yw - my[..., None, None]) ** 2 * win).sum(axis=(-1, -2))
        cxy = ((xw - mx[..., None, None]) * (yw - my[..., None, None]) * win).sum(axis=(-1, -2))
        maps.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return np.stack(maps)


# ---------------------------------------------------------------------------------------------
# background metrics


def test_l2_bg_with_empty_mask_equals_magicbrush_l2_including_resize():
    rng = np.random.default_rng(0)
    pairs = [(rand_image(rng, 48, 64), rand_image(rng, 48, 64)), (rand_image(rng, 50, 37), rand_image(rng, 48, 64))]
    metric = create_metric("l2_bg")
    batch = [sample(o, s, np.zeros((48, 64), np.uint8)) for o, s in pairs]
    got = metric.update(batch)["l2_bg"]
    ref = [magicbrush_l2(o, s) for o, s in pairs]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # the resized case really differs from a plain comparison of the first 48x64 pixels
    assert abs(got[1] - got[0]) > 1e-3
    assert metric.compute()["l2_bg"].value == pytest.approx(np.mean(ref), rel=1e-6)
    assert l2_bg(*pairs[1]) == pytest.approx(ref[1], rel=1e-6)


def test_l2_bg_ignores_pixels_inside_the_edit_mask():
    rng = np.random.default_rng(1)
    src = np.asarray(rand_image(rng, 41, 37))  # 41 * 37 * 3 values: not a multiple of the 192-value runs
    out = np.asarray(rand_image(rng, 41, 37)).copy()
    mask = box_mask(41, 37, 5, 10, 25, 30)
    ref = numpy_masked_mse(out, src, mask)
    assert l2_bg(Image.fromarray(out), Image.fromarray(src), mask) == pytest.approx(ref, rel=1e-12)
    out[mask == 1] = 0  # anything inside M_e
    assert l2_bg(Image.fromarray(out), Image.fromarray(src), mask) == pytest.approx(ref, rel=1e-12)
    assert l2_bg(Image.fromarray(src), Image.fromarray(src), mask) == 0.0


def test_psnr_bg_is_the_formula_on_the_background_mse_and_capped():
    rng = np.random.default_rng(2)
    src, out = rand_image(rng, 32, 32), rand_image(rng, 32, 32)
    mask = box_mask(32, 32, 0, 0, 16, 32)
    mse = numpy_masked_mse(np.asarray(out), np.asarray(src), mask)
    assert psnr_bg(out, src, mask) == pytest.approx(10 * math.log10(1 / mse), rel=1e-10)
    assert psnr_bg(src, src, mask) == 100.0
    assert psnr_bg(src, src, mask, max_db=60.0) == 60.0


def test_ssim_bg_with_empty_mask_equals_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(3)
    src = np.asarray(rand_image(rng, 40, 52))
    noisy = np.clip(src.astype(int) + rng.integers(-40, 41, src.shape), 0, 255).astype(np.uint8)
    ref = skimage_metrics.structural_similarity(
        noisy / 255.0, src / 255.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0, channel_axis=-1,
    )
    got = ssim_bg(Image.fromarray(noisy), Image.fromarray(src))
    assert got == pytest.approx(ref, abs=1e-5)  # float32 convolutions
    assert 0.05 < got < 0.99  # not a degenerate case


def test_ssim_bg_averages_the_map_over_background_centres_with_m_e_filled_from_the_source():
    rng = np.random.default_rng(4)
    src = np.asarray(rand_image(rng, 30, 34))
    out = np.clip(src.astype(int) + rng.integers(-30, 31, src.shape), 0, 255).astype(np.uint8)
    out[8:20, 10:24] = 255  # a "changed object"
    mask = box_mask(30, 34, 8, 10, 20, 24)
    filled = np.where(mask[:, :, None] == 1, src, out)  # only the background reaches the windows
    smap = numpy_ssim_map(filled / 255.0, src / 255.0)  # 3 x 20 x 24: centres 5..24, 5..28
    bg_centres = mask[5:25, 5:29] == 0
    ref = float(smap[:, bg_centres].mean())
    got = ssim_bg(Image.fromarray(out), Image.fromarray(src), mask)
    assert got == pytest.approx(ref, abs=1e-5)
    # the whole-image SSIM is lower: the changed object is left out
    assert got > ssim_bg(Image.fromarray(out), Image.fromarray(src)) + 0.01
    # whatever is drawn inside M_e, the score is the same
    out[8:20, 10:24] = rng.integers(0, 256, (12, 14, 3))
    assert ssim_bg(Image.fromarray(out), Image.fromarray(src), mask) == got


def test_ssim_bg_with_a_mask_equals_scikit_image_on_the_filled_output():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(7)
    src = np.asarray(rand_image(rng, 44, 50))
    out = np.clip(src.astype(int) + rng.integers(-25, 26, src.shape), 0, 255).astype(np.uint8)
    mask = box_mask(44, 50, 10, 12, 30, 35)
    out[mask == 1] = rng.integers(0, 256, (int(mask.sum()), 3))
    filled = np.where(mask[:, :, None] == 1, src, out)
    _, full = skimage_metrics.structural_similarity(
        filled / 255.0, src / 255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0, channel_axis=-1, full=True)
    inner = full[5:-5, 5:-5]  # the centres whose 11x11 window lies inside the image
    ref = float(inner[mask[5:-5, 5:-5] == 0].mean())
    assert ssim_bg(Image.fromarray(out), Image.fromarray(src), mask) == pytest.approx(ref, abs=1e-5)


def test_ssim_bg_of_identical_backgrounds_is_exactly_one():
    rng = np.random.default_rng(8)
    src = np.asarray(rand_image(rng, 40, 40))
    mask = box_mask(40, 40, 12, 12, 28, 30)
    out = src.copy()
    out[mask == 1] = 255 - out[mask == 1]  # a strong edit inside M_e, the background untouched
    metrics = create_metrics("l2_bg,psnr_bg,ssim_bg")
    got = {name: m.update([sample(out, src, mask)])[name][0] for name, m in metrics.items()}
    assert got == {"l2_bg": 0.0, "psnr_bg": 100.0, "ssim_bg": 1.0}
    # one background pixel changed: below 1 (the fill does not hide a changed background)
    out[5, 5] = 255 - out[5, 5]
    assert ssim_bg(Image.fromarray(out), Image.fromarray(src), mask) < 1.0


def test_background_metrics_without_background_are_not_applicable():
    rng = np.random.default_rng(5)
    src, out = rand_image(rng, 20, 20), rand_image(rng, 20, 20)
    full = np.ones((20, 20), np.uint8)
    metrics = create_metrics("l2_bg,psnr_bg,ssim_bg")
    for m in metrics.values():
        assert m.update([sample(out, src, full)]) == {m.name: [None]}
        result = m.compute()[m.name]
        assert result.available is False and result.n == 0 and result.value is None
        assert "background" in result.reason
    # images too small for an 11x11 window: no SSIM, but L2 is defined
    tiny_src, tiny_out = rand_image(rng, 8, 30), rand_image(rng, 8, 30)
    assert ssim_bg(tiny_out, tiny_src) is None
    assert l2_bg(tiny_out, tiny_src) is not None


def test_batched_scores_equal_one_by_one_scores_for_mixed_sizes():
    rng = np.random.default_rng(6)
    batch = []
    for i in range(7):
        h, w = (24, 30) if i % 2 else (33, 27)
        mask = box_mask(h, w, 3, 4, 3 + i + 5, 4 + i + 6)
        out_size = (w, h) if i != 3 else (w + 5, h - 4)  # one output needs resizing
        batch.append(sample(rand_image(rng, out_size[1], out_size[0]), rand_image(rng, h, w), mask))
    metrics = create_metrics("l2_bg,psnr_bg,ssim_bg,localisation", chunk_size=2)
    for name, fn in (("l2_bg", l2_bg), ("psnr_bg", psnr_bg), ("ssim_bg", ssim_bg)):
        got = metrics[name].update(batch)[name]
        ref = [fn(s.output, s.source, s.edit_mask) for s in batch]
        np.testing.assert_allclose(got, ref, rtol=1e-12 if name != "ssim_bg" else 1e-6)
    loc = metrics["localisation"].update(batch)
    for i, s in enumerate(batch):
        one = localisation(s.output, s.source, s.edit_mask)
        assert {k: loc[k][i] for k in one} == pytest.approx(one)


# ---------------------------------------------------------------------------------------------
# localisation


def test_localisation_identity_has_zero_recall_and_precision():
    rng = np.random.default_rng(7)
    src = rand_image(rng, 32, 32)
    mask = box_mask(32, 32, 8, 8, 24, 24)
    assert localisation(src, src, mask) == {"loc_precision": 0.0, "loc_recall": 0.0, "loc_iou": 0.0}


def test_localisation_counts_changed_pixels_against_the_edit_mask():
    src = np.full((20, 20, 3), 100, np.uint8)
    out = src.copy()
    out[0:10, 0:10] = 200  # changed: rows 0-9, cols 0-9 (100 px)
    mask = box_mask(20, 20, 5, 0, 15, 10)  # rows 5-14, cols 0-9 (100 px), overlap 50 px
    got = localisation(Image.fromarray(out), Image.fromarray(src), mask)
    assert got == pytest.approx({"loc_precision": 0.5, "loc_recall": 0.5, "loc_iou": 50 / 150})
    out2 = src.copy()
    out2[mask == 1] = 0
    assert localisation(Image.fromarray(out2), Image.fromarray(src), mask) == pytest.approx(
        {"loc_precision": 1.0, "loc_recall": 1.0, "loc_iou": 1.0}
    )


def test_localisation_threshold_is_on_the_largest_channel_difference():
    src = np.full((4, 4, 3), 100, np.uint8)
    out = src.copy()
    out[0, 0, 2] = 100 + 25  # 25/255 < 0.1: not a change
    out[1, 1, 1] = 100 - 26  # 26/255 > 0.1: a change, in one channel only
    c = changed_mask(Image.fromarray(out), Image.fromarray(src))
    assert c.sum() == 1 and c[1, 1] == 1
    assert changed_mask(Image.fromarray(out), Image.fromarray(src), threshold=0.05).sum() == 2


def test_localisation_empty_edit_mask():
    rng = np.random.default_rng(8)
    src, out = rand_image(rng, 16, 16), rand_image(rng, 16, 16)
    empty = np.zeros((16, 16), np.uint8)
    got = localisation(out, src, empty)
    assert got["loc_recall"] is None and got["loc_precision"] == 0.0 and got["loc_iou"] == 0.0
    assert localisation(src, src, empty)["loc_iou"] is None


# ---------------------------------------------------------------------------------------------
# statistics and results


def test_bootstrap_ci_equals_a_plain_loop_and_is_seeded():
    rng = np.random.default_rng(9)
    x = rng.normal(2.0, 1.0, 57)
    loop_rng = np.random.default_rng(11)
    means = [x[loop_rng.integers(0, x.size, x.size)].mean() for _ in range(500)]
    ref = (np.quantile(means, 0.025), np.quantile(means, 0.975))
    assert bootstrap_ci(x, n_resamples=500, seed=11) == pytest.approx(ref, rel=1e-12)
    assert bootstrap_ci(x, n_resamples=500, seed=11) == bootstrap_ci(x, n_resamples=500, seed=11)
    assert bootstrap_ci(x, n_resamples=500, seed=12) != bootstrap_ci(x, n_resamples=500, seed=11)
    assert bootstrap_ci([], seed=0) == (None, None)
    assert bootstrap_ci([3.5]) == (3.5, 3.5)


def test_bootstrap_ci_matches_the_normal_approximation_for_a_large_sample():
    rng = np.random.default_rng(10)
    x = rng.normal(0.0, 1.0, 4000)
    lo, hi = bootstrap_ci(x, n_resamples=2000, seed=0)
    half = 1.96 * x.std() / math.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_group_summaries_skip_not_applicable_values():
    got = group_summaries([1.0, 3.0, None, 10.0], ["b", "b", "a", "c"], n_resamples=50)
    assert list(got) == ["a", "b", "c"]
    assert got["a"] == {"value": None, "ci": [None, None], "n": 0}
    assert got["b"]["value"] == 2.0 and got["b"]["n"] == 2
    assert got["b"]["ci"][0] >= 1.0 and got["b"]["ci"][1] <= 3.0


def test_results_schema_is_json_with_breakdowns():
    rng = np.random.default_rng(12)
    batch = []
    for i in range(6):
        src = rand_image(rng, 24, 24)
        out = src if i % 3 == 0 else rand_image(rng, 24, 24)
        batch.append(sample(out, src, box_mask(24, 24, 4, 4, 12, 12), edit_type=["replace", "remove"][i % 2],
                            pipeline=["inpaint", "composition", "region_edit"][i % 3], sample_id=f"s{i}"))
    metrics = create_metrics("l2_bg,localisation", n_resamples=200, seed=3)
    results = {}
    for m in metrics.values():
        m.update(batch[:4])
        m.update(batch[4:])
        results.update(m.compute())
    data = json.loads(json.dumps(results_to_dict(results), allow_nan=False))
    assert set(data) == {"l2_bg", "loc_precision", "loc_recall", "loc_iou"}
    entry = data["l2_bg"]
    assert set(entry) == {"value", "ci", "n", "higher_is_better", "available", "reason", "version", "by_edit_type",
                          "by_pipeline"}
    assert entry["n"] == 6 and entry["higher_is_better"] is False and entry["available"] is True
    assert entry["ci"][0] <= entry["value"] <= entry["ci"][1]
    assert set(entry["by_edit_type"]) == {"replace", "remove"}
    assert entry["by_pipeline"]["inpaint"]["value"] == 0.0  # the identity outputs
    assert data["loc_recall"]["by_pipeline"]["inpaint"]["value"] == 0.0
    rows = metrics["localisation"].per_sample()
    assert [r["sample_id"] for r in rows] == [f"s{i}" for i in range(6)] and rows[0]["loc_recall"] == 0.0


# ---------------------------------------------------------------------------------------------
# inputs and registry


def test_metric_input_validates_masks():
    rng = np.random.default_rng(13)
    src = rand_image(rng, 10, 12)
    with pytest.raises(InputError, match="shape"):
        sample(src, src, np.zeros((12, 10), np.uint8))
    with pytest.raises(InputError, match="0 and 1"):
        sample(src, src, np.full((10, 12), 255, np.uint8))
    s = sample(src.convert("RGBA").resize((24, 20)), src, np.zeros((10, 12), bool))
    assert s.output_image.size == (12, 10) and s.output_image.mode == "RGB" and s.edit_mask.dtype == np.uint8


def test_metric_input_keeps_arrays_and_scores_them_like_images():
    rng = np.random.default_rng(18)
    out, src = np.asarray(rand_image(rng, 20, 26)).copy(), np.asarray(rand_image(rng, 20, 26)).copy()
    mask = box_mask(20, 26, 2, 3, 9, 12)
    from_arrays = sample(out, src, mask)
    assert from_arrays.output_array is out and from_arrays.source_array is src
    from_images = sample(Image.fromarray(out), Image.fromarray(src), mask)
    for name in ("l2_bg", "ssim_bg", "localisation"):
        m1, m2 = create_metric(name), create_metric(name)
        assert m1.update([from_arrays]) == m2.update([from_images])
    with pytest.raises(InputError, match="uint8"):
        sample(out.astype(np.float32), src, mask)


def test_record_restores_scored_rows_without_rescoring():
    rng = np.random.default_rng(19)
    batch = [sample(rand_image(rng, 16, 16), rand_image(rng, 16, 16), box_mask(16, 16, 2, 2, 8, 8),
                    edit_type="replace", pipeline="inpaint", sample_id=f"s{i}") for i in range(4)]
    scored = create_metric("localisation", n_resamples=100)
    scored.update(batch)
    restored = create_metric("localisation", n_resamples=100)
    restored.record(json.loads(json.dumps(scored.per_sample())))
    assert results_to_dict(restored.compute()) == results_to_dict(scored.compute())


def test_registry_names_outputs_and_options():
    assert canonical_name("loc_iou") == "localisation"
    assert parse_metric_list("l2_bg, loc_iou,loc_recall") == ["l2_bg", "localisation"]
    assert "aesthetic" in parse_metric_list("all")
    with pytest.raises(InputError, match="unknown metric"):
        parse_metric_list("l2,bogus")
    m = create_metric("localisation", threshold=0.2, clip_model="ignored", seed=5)
    assert m.threshold == 0.2 and m.seed == 5
    assert create_metric("clip_sim_fg", clip_model="tiny-clip").requires == ("tiny-clip",)


def test_importing_metrics_does_not_import_torch():
    code = "import sys, benchmark.metrics; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------------------------
# model-based metrics


@pytest.fixture
def no_user_models(monkeypatch, tmp_path):
    """No model configured anywhere (the tiny ones still resolve)."""
    monkeypatch.setenv("REFCOCO_EDIT_CONFIG", str(tmp_path / "absent.yaml"))
    for var in ("REFCOCO_EDIT_MODEL_AESTHETIC", "REFCOCO_EDIT_MODEL_CLIP_VIT_L14"):
        monkeypatch.delenv(var, raising=False)


def test_aesthetic_without_weights_is_unavailable_not_random(no_user_models):
    rng = np.random.default_rng(14)
    metric = create_metric("aesthetic")
    assert "REFCOCO_EDIT_MODEL_AESTHETIC" in metric.availability()
    src = rand_image(rng, 16, 16)
    assert metric.update([sample(src, src, np.zeros((16, 16), np.uint8))]) == {"aesthetic": [None]}
    result = metric.compute()["aesthetic"]
    assert result.available is False and result.value is None and "REFCOCO_EDIT_MODEL_AESTHETIC" in result.reason
    assert json.loads(json.dumps(result.to_dict()))["available"] is False


def test_clip_metric_with_a_missing_model_path_is_unavailable(no_user_models, tmp_path):
    rng = np.random.default_rng(20)
    src = rand_image(rng, 16, 16)
    overrides = {"clip-vit-l14": str(tmp_path / "no-such-clip")}
    metric = create_metric("clip_sim_fg", overrides=overrides)
    assert "does not exist" in metric.availability()
    assert metric.update([sample(src, src, box_mask(16, 16, 2, 2, 8, 8), edit_text="x")]) == {
        "clip_sim_fg": [None], "clip_sim_fg_ref": [None]}
    for name in ("clip_sim_fg", "clip_sim_fg_ref"):
        result = metric.compute()[name]
        assert result.available is False and "no-such-clip" in result.reason


def _tiny_clip(tiny_cache):
    from transformers import CLIPModel, CLIPProcessor

    from refcoco_edit.models.resolver import resolve

    src = resolve("tiny-clip").source
    return CLIPModel.from_pretrained(src).eval(), CLIPProcessor.from_pretrained(src)


def _features(out):
    return out if hasattr(out, "norm") else out.pooler_output


def test_clip_sim_fg_equals_torchmetrics_clipscore_on_the_crop(tiny_cache):
    pytest.importorskip("torchmetrics")
    import importlib

    import torch
    from torchmetrics.multimodal.clip_score import CLIPScore

    # the module, not the `clip_score` function that the package re-exports under the same name
    tm_functional = importlib.import_module("torchmetrics.functional.multimodal.clip_score")

    def loader():
        # torchmetrics 1.9 expects get_*_features to return tensors (transformers < 5).
        model, processor = _tiny_clip(tiny_cache)
        for attr in ("get_image_features", "get_text_features"):
            fn = getattr(model, attr)
            setattr(model, attr, lambda *a, _fn=fn, **k: _features(_fn(*a, **k)))
        return model, processor

    rng = np.random.default_rng(15)
    texts = ["a giraffe", "a red umbrella with white dots", "a giraffe"]
    boxes = [(4, 6, 20, 30), (0, 0, 40, 48), (10, 2, 38, 12)]
    batch = [
        sample(rand_image(rng, 40, 48), rand_image(rng, 40, 48), box_mask(40, 48, *b), edit_text=t, prompt="p " + t)
        for b, t in zip(boxes, texts)
    ]
    metric = create_metric("clip_sim_fg", clip_model="tiny-clip", margin=0.1, device="cpu")
    got = metric.update(batch)["clip_sim_fg"]

    tm = CLIPScore(model_name_or_path=loader)
    crops = []
    for s, (top, left, bottom, right) in zip(batch, boxes):
        dy, dx = 0.1 * (bottom - top), 0.1 * (right - left)
        box = (max(0, math.floor(left - dx)), max(0, math.floor(top - dy)),
               min(48, math.ceil(right + dx)), min(40, math.ceil(bottom + dy)))
        crops.append(torch.from_numpy(np.array(s.output.crop(box))).permute(2, 0, 1))
    raw, n = tm_functional._clip_score_update(crops, texts, tm.model, tm.processor)  # unclamped, per sample
    assert n == 3
    np.testing.assert_allclose(got, raw.detach().numpy(), rtol=1e-4, atol=1e-4)
    for crop, text, value in zip(crops, texts, got):
        tm.reset()
        tm.update(crop, text)
        assert float(tm.compute()) == pytest.approx(max(value, 0.0), abs=1e-4)  # CLIPScore = max(100 cos, 0)


def test_clip_metrics_equal_a_direct_transformers_computation(tiny_cache):
    import torch

    model, processor = _tiny_clip(tiny_cache)
    rng = np.random.default_rng(16)
    mask = box_mask(32, 32, 8, 8, 16, 24)
    s = sample(rand_image(rng, 32, 32), rand_image(rng, 32, 32), mask, prompt="make the cat blue",
               edit_text="blue", referring_text="the cat", target_caption="a blue cat on a mat")

    def direct(image, text):
        with torch.no_grad():
            px = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
            img = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)[0]
            ids = processor.tokenizer([text], return_tensors="pt")
            txt = model.text_projection(model.text_model(**ids).pooler_output)[0]
        return float(100 * torch.dot(img / img.norm(), txt / txt.norm()))

    crop = s.output.crop((6, 7, 26, 17))  # box rows 8-15, cols 8-23 grown by 10 %: (6.4, 7.2, 25.6, 16.8)
    for text_opt, text in (("edit", "blue"), ("prompt", "make the cat blue"), ("referring", "the cat")):
        m = create_metric("clip_sim_fg", clip_model="tiny-clip", text=text_opt, device="cpu")
        got = m.update([s])
        assert got["clip_sim_fg"][0] == pytest.approx(direct(crop, text), abs=1e-4)
        # clip_sim_fg_ref: the same crop against P_r, whatever `text` says
        assert got["clip_sim_fg_ref"][0] == pytest.approx(direct(crop, "the cat"), abs=1e-4)
    assert abs(direct(crop, "blue") - direct(crop, "the cat")) > 1e-3  # the two readings differ here
    m = create_metric("clip_t", clip_model="tiny-clip", device="cpu")
    assert m.update([s])["clip_t"][0] == pytest.approx(direct(s.output, s.target_caption), abs=1e-4)
    # not applicable: an empty edit mask; a missing caption (and no caption at all: unavailable)
    empty = sample(s.output, s.source, np.zeros((32, 32), np.uint8), edit_text="blue")
    assert create_metric("clip_sim_fg", clip_model="tiny-clip", device="cpu").update([empty]) == {
        "clip_sim_fg": [None], "clip_sim_fg_ref": [None]}
    # a sample without P_r has clip_sim_fg but no clip_sim_fg_ref (and the reverse)
    no_ref = sample(s.output, s.source, mask, edit_text="blue", referring_text="")
    no_edit = sample(s.output, s.source, mask, edit_text=" ", referring_text="the cat")
    got = create_metric("clip_sim_fg", clip_model="tiny-clip", device="cpu").update([no_ref, no_edit])
    assert got["clip_sim_fg"][0] == pytest.approx(direct(crop, "blue"), abs=1e-4) and got["clip_sim_fg"][1] is None
    assert got["clip_sim_fg_ref"][0] is None and got["clip_sim_fg_ref"][1] == pytest.approx(direct(crop, "the cat"),
                                                                                            abs=1e-4)
    assert canonical_name("clip_sim_fg_ref") == "clip_sim_fg"
    m = create_metric("clip_t", clip_model="tiny-clip", device="cpu")
    m.update([empty])
    assert m.compute()["clip_t"].available is False and "caption" in m.compute()["clip_t"].reason


def test_aesthetic_tiny_head_equals_laion_mlp_by_hand(tiny_cache, tmp_path):
    import torch
    from safetensors.torch import load_file

    from refcoco_edit.models.resolver import resolve

    model, processor = _tiny_clip(tiny_cache)
    head_dir = Path(resolve("tiny-aesthetic").source)
    state = {k: v.double().numpy() for k, v in load_file(str(head_dir / "model.safetensors")).items()}
    rng = np.random.default_rng(17)
    images = [rand_image(rng, 30, 40) for _ in range(3)]
    with torch.no_grad():
        px = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        emb = model.visual_projection(model.vision_model(pixel_values=px).pooler_output).double().numpy()
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for i in (0, 2, 4, 6, 7):  # Linear layers; dropout is inactive at inference, no activations
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    ref = x[:, 0]

    batch = [sample(im, im, np.zeros((30, 40), np.uint8)) for im in images]
    metric = create_metric("aesthetic", aesthetic_model="tiny-aesthetic", device="cpu")
    np.testing.assert_allclose(metric.update(batch)["aesthetic"], ref, rtol=1e-5, atol=1e-6)
    assert metric.requires == ("tiny-aesthetic", "tiny-clip")

    # LAION's released format: a torch-saved state dict (.pth), given as the `aesthetic` model
    pth = tmp_path / "head.pth"
    torch.save({k: torch.from_numpy(v).float() for k, v in state.items()}, pth)
    metric = create_metric("aesthetic", overrides={"aesthetic": str(pth)}, clip_model="tiny-clip", device="cpu")
    np.testing.assert_allclose(metric.update(batch)["aesthetic"], ref, rtol=1e-5, atol=1e-6)

    # a file that is not a head is refused with the reason, never replaced by random weights
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(3)}, bad)
    metric = create_metric("aesthetic", overrides={"aesthetic": str(bad)}, clip_model="tiny-clip", device="cpu")
    assert metric.update(batch) == {"aesthetic": [None, None, None]}
    assert "not a LAION aesthetic head" in metric.compute()["aesthetic"].reason


# ---------------------------------------------------------------------------------------------
# the reference edit scores a perfect background: the dataset's invariant, end to end


def test_reference_method_has_a_perfect_background_on_every_sample_of_every_edit_type(tmp_path):
    """The bundled RefShapes sample built as the demo builds it (exact edits and OpenCV removals),
    exported, and scored with `rie-bench run --method reference`: every sample of every edit type and
    pipeline gets l2_bg 0, psnr_bg at its cap and ssim_bg 1."""
    from benchmark.cli import main as rie_bench
    from refcoco_edit.curation.build import BuildConfig, build
    from refcoco_edit.dataset.export import export_store
    from refcoco_edit.refer.reader import RefCOCO
    from refcoco_edit.store import Store

    with Store.open(tmp_path / "store.db", durable=False) as store:
        summary = build(RefCOCO.load("sample"), store, BuildConfig(
            pipelines=("synthetic", "classical_inpaint"), auto_accept="oracle", limit=6).check())
        assert summary.built == 24 and summary.failed == 0
    export_store(tmp_path / "store.db", tmp_path / "ds", statuses=["accepted", "candidate"])
    seen = set()
    for split in ("train", "val", "testA", "testB"):
        if not list((tmp_path / "ds" / "data").glob(f"{split}-*.parquet")):
            continue
        run = tmp_path / f"run-{split}"
        assert rie_bench(["run", "--method", "reference", "--dataset", str(tmp_path / "ds"), "--split", split,
                          "--out", str(run), "--metrics", "l2_bg,psnr_bg,ssim_bg", "--no-progress"]) == 0
        for row in (json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()):
            assert (row["l2_bg"], row["psnr_bg"], row["ssim_bg"]) == (0.0, 100.0, 1.0), row
            seen.add((row["edit_type"], row["pipeline"]))
    assert seen == {("replace", "synthetic"), ("remove", "synthetic"), ("attribute", "synthetic"),
                    ("remove", "classical_inpaint")}
