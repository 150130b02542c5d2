"""Background preservation: l2_bg, psnr_bg and ssim_bg, over the pixels outside the edit mask M_e.

All three compare the output (at the source's size, see `base`) with the source image I_s, both as
RGB in [0, 1], and look only at background pixels, those where M_e == 0. No image is zero-filled:
the masked pixels are left out of the average, not set to 0 in both images (which would inflate
PSNR/SSIM with perfectly matching black areas).

- `l2_bg`: mean over background pixels and the 3 channels of (output - source)^2. With an empty M_e
  this is exactly MagicBrush's L2 (`nn.MSELoss` on `ToTensor` images). Lower is better.
- `psnr_bg`: 10 log10(1 / l2_bg) in dB, from the same background MSE; capped at `max_db` (100 dB by
  default) so that an untouched background (MSE 0, PSNR infinite) still averages. Higher is better.
- `ssim_bg`: SSIM of the background only. The output's pixels inside M_e are first replaced by the
  source's (in the output only; the source is left as it is), so that whatever a method drew inside
  M_e cannot reach the score through a window that straddles the mask's border. Then the SSIM map
  of Wang et al. (Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, per
  channel, population (co)variances) is computed at every pixel whose 11x11 window lies inside the
  image, and averaged over those pixels whose *centre* is background, and over the channels. So two
  images whose backgrounds are identical score exactly 1 whatever differs inside M_e (before this
  fill, a perfect reference edit scored about 0.99 because windows near M_e saw the edit), while a
  background pixel that did change (a halo around the edit) still lowers every window that holds
  it. With an empty mask this equals (to about 1e-6, float32)
  `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)`; with a mask, the mean of that
  function's `full=True` map of (filled output, source) over background centres away from the
  border (a test checks both). Higher is better.

A sample whose background is empty (M_e covers the image; for SSIM: no background centre pixel
lies 5 px from the border) gets no value (None) and is left out of the means.

Vectorised: a batch is split into stacks of same-size images (`base.stacked_groups`) and each stack
is scored with a handful of numpy/torch array operations, with no Python loop over pixels:
|output - source| in uint8, squared in float64 and reduced over the background with one matrix
product, exactly (`background_sse`); SSIM with separable float32 Gaussian filtering in torch
(within about 1e-6 of a float64 computation). On CPU these kernels are memory-bound: stacks of one
image (the default `chunk_size=1`, no copy) measured fastest, as a stack that stays in the cache
beats a large one, and the speed-up over a per-image loop comes from the few passes over small
dtypes (benchmarks/metrics_throughput.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.metrics.base import Metric, MetricInput, as_binary_mask, as_rgb_image, stacked_groups

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DEFAULT_MAX_DB = 100.0


# --------------------------------------------------------------------------------------------
# array kernels: stacks of same-size images (N x H x W x 3 uint8) and masks (N x H x W, 1 = edit)


def as_tensor(array: np.ndarray) -> Any:
    """A torch view of a numpy array (copied only when numpy marks it read-only, as PIL's are)."""
    import torch

    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def background_sse(outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the sum over background pixels and channels of (output - source)^2 in 8-bit units,
    and the number of background pixels.

    |output - source| is taken in uint8 (max - min), squared in float64 (exact), and the background
    sum is one matrix product per image, background row vector x (pixels x 3) squares: every
    partial sum is an integer below 2^53, so the result is exact whatever the summation order.
    Masking at pixel level through the product avoids broadcasting the mask over the 3 channels,
    which on CPU costs more than all the rest.
    """
    n = outputs.shape[0]
    diff = np.maximum(outputs, sources)
    diff -= np.minimum(outputs, sources)
    sq = diff.reshape(n, -1, 3).astype(np.float64)
    sq *= sq
    bg = (masks.reshape(n, 1, -1) == 0).astype(np.float64)
    sse = np.matmul(bg, sq).sum(axis=(1, 2))
    return sse, bg.sum(axis=(1, 2))


def l2_bg_stack(outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image background MSE in [0, 1] units; NaN where the background is empty."""
    sse, n_bg = background_sse(outputs, sources, masks)
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = sse / (3.0 * n_bg) / (255.0 * 255.0)
    mse[n_bg == 0] = np.nan
    return mse


def psnr_from_mse(mse: np.ndarray | float, max_db: float = DEFAULT_MAX_DB) -> np.ndarray:
    """10 log10(1 / mse), capped at max_db (MSE 0 gives max_db); NaN stays NaN."""
    mse = np.asarray(mse, dtype=np.float64)
    floor = 10.0 ** (-max_db / 10.0)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(mse), np.nan, -10.0 * np.log10(np.maximum(mse, floor)))


def gaussian_kernel_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    half = (size - 1) / 2.0
    x = np.arange(size, dtype=np.float64) - half
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def gaussian_filter_valid(planes: Any, kernel: np.ndarray) -> Any:
    """Separable 'valid' filtering of the last two dims: one shifted multiply-add per tap and
    direction on tensor views (on CPU several times faster than torch's conv2d for 1-channel planes)."""
    taps = [float(t) for t in kernel]
    r = len(taps) - 1
    h, w = planes.shape[-2], planes.shape[-1]
    rows = planes[..., 0 : w - r] * taps[0]
    for i in range(1, len(taps)):
        rows.add_(planes[..., i : i + w - r], alpha=taps[i])
    out = rows[..., 0 : h - r, :] * taps[0]
    for i in range(1, len(taps)):
        out.add_(rows[..., i : i + h - r, :], alpha=taps[i])
    return out


def ssim_map_stack(outputs: np.ndarray, sources: np.ndarray, dtype: Any = None) -> Any:
    """SSIM maps (N x 3 x (H-10) x (W-10) torch tensor) at every pixel whose window fits the image.

    float32 by default (about 1e-6 from a float64 computation); the Gaussian window is applied
    separably (22 instead of 121 multiply-adds per pixel), see `gaussian_filter_valid`.
    """
    import torch

    dtype = dtype or torch.float32
    x = as_tensor(outputs).permute(0, 3, 1, 2).to(dtype) / 255.0
    y = as_tensor(sources).permute(0, 3, 1, 2).to(dtype) / 255.0
    planes = torch.stack([x, y, x * x, y * y, x * y], dim=1)  # N x 5 x 3 x H x W
    mu_x, mu_y, e_xx, e_yy, e_xy = gaussian_filter_valid(planes, gaussian_kernel_1d()).unbind(dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den


def fill_edit_region(outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The outputs with the sources' pixels inside M_e (masks == 1): what `ssim_bg` compares, so that
    only the background reaches its windows. The outputs themselves when every mask is empty."""
    if not masks.any():
        return outputs
    return np.where(masks[..., None] != 0, sources, outputs)


def ssim_bg_stack(outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image mean of the SSIM map of (output with M_e filled from the source, source) over
    background centre pixels and channels; NaN if none (see the module docstring)."""
    import torch

    n, h, w, _ = outputs.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        return np.full(n, np.nan)
    smap = ssim_map_stack(fill_edit_region(outputs, sources, masks), sources)
    r = SSIM_WINDOW // 2
    bg = (as_tensor(masks[:, r : h - r, r : w - r]) == 0).to(smap.dtype)
    total = (smap * bg[:, None]).flatten(1).sum(dim=1, dtype=torch.float64)
    count = bg.flatten(1).sum(dim=1, dtype=torch.float64) * 3.0
    out = (total / count).numpy()
    out[count.numpy() == 0] = np.nan
    return out


# --------------------------------------------------------------------------------------------
# plain functions on one image pair


def _one(output: Any, source: Any, edit_mask: Any | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from PIL import Image

    src = as_rgb_image(source, "source image")
    out = as_rgb_image(output, "output image")
    if out.size != src.size:
        out = out.resize(src.size, Image.BICUBIC)
    hw = (src.height, src.width)
    mask = np.zeros(hw, np.uint8) if edit_mask is None else as_binary_mask(edit_mask, hw)
    return np.asarray(out)[None], np.asarray(src)[None], mask[None]


def _scalar(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def l2_bg(output: Any, source: Any, edit_mask: Any | None = None) -> float | None:
    """MagicBrush's L2 over the background (M_e == 0); no mask = the whole image."""
    return _scalar(l2_bg_stack(*_one(output, source, edit_mask))[0])


def psnr_bg(output: Any, source: Any, edit_mask: Any | None = None, max_db: float = DEFAULT_MAX_DB) -> float | None:
    """PSNR (dB) from the background MSE, capped at max_db."""
    return _scalar(psnr_from_mse(l2_bg_stack(*_one(output, source, edit_mask)), max_db)[0])


def ssim_bg(output: Any, source: Any, edit_mask: Any | None = None) -> float | None:
    """Mean SSIM over background centre pixels, M_e filled from the source (see the module docstring)."""
    return _scalar(ssim_bg_stack(*_one(output, source, edit_mask))[0])


# --------------------------------------------------------------------------------------------
# Metric classes


class _BackgroundMetric(Metric):
    empty_reason = "every sample's edit mask covers the whole image: no background to score"

    def __init__(self, *, chunk_size: int = 1, **kwargs: Any) -> None:
        # Images per stack; see the module docstring for why 1 is the CPU default.
        super().__init__(**kwargs)
        self.chunk_size = chunk_size

    def score_stack(self, outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_batch(self, batch: Sequence[MetricInput]) -> dict[str, list[float | None]]:
        values = np.full(len(batch), np.nan)
        for idx, outputs, sources, masks in stacked_groups(batch, self.chunk_size):
            values[idx] = self.score_stack(outputs, sources, masks)
        return {self.name: [_scalar(v) for v in values]}


class L2Background(_BackgroundMetric):
    name = "l2_bg"
    higher_is_better = False
    description = "MagicBrush's L2 (MSE, images in [0,1]) over pixels outside the edit mask"

    def score_stack(self, outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return l2_bg_stack(outputs, sources, masks)


class PSNRBackground(_BackgroundMetric):
    name = "psnr_bg"
    higher_is_better = True
    description = "PSNR (dB, capped at 100) of the background MSE"

    def __init__(self, *, max_db: float = DEFAULT_MAX_DB, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_db = max_db

    def score_stack(self, outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return psnr_from_mse(l2_bg_stack(outputs, sources, masks), self.max_db)


class SSIMBackground(_BackgroundMetric):
    name = "ssim_bg"
    higher_is_better = True
    description = "SSIM (Gaussian 11x11, sigma 1.5) averaged over background pixels, M_e filled from the source"

    def score_stack(self, outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return ssim_bg_stack(outputs, sources, masks)
