"""What every reference-edit pipeline shares: the candidate record, input checks, sizes, devices,
background restore and the edit mask M_e.

Input rules (`prepare_inputs`), the same for every pipeline:
- images are converted to RGB (RGBA, L, P, 16-bit ... are accepted);
- a mask is a (H, W) array (non-zero is inside) or a PIL image (pixels above 127 are inside);
- a mask of another size than the image is resized to it with nearest neighbour and a
  `MaskResizedWarning` says so;
- an empty or a full mask is refused with `InputError`: there is nothing to edit, or nothing to keep;
- the diffusion models work at a size whose sides are multiples of 8 (the VAE's factor): the source's
  own size rounded to the nearest multiple, or, with `size`, scaled so that the longer side is `size`
  first. Results are resized back and returned at the source's size.

The edit mask M_e (`edit_mask`): the pixels within `margin` pixels of the requested region whose
largest channel difference between source and result exceeds `CHANGE_THRESHOLD` (24 of 255, about
10%: above the VAE's round-trip noise on natural images, below any visible edit), closed and with
holes filled, so that it is "where the edit actually happened". When no pixel changed that much the
requested region itself is returned, so M_e is never empty for a real edit.

Seeds and determinism: candidate i of a call gets seed + i, and its noise comes from a CPU generator
of that seed, so a candidate regenerated alone (num=1, its seed) starts from the same noise; batched
and single forward passes differ only by float rounding (at most 1 of 255 seen with the tiny models).
The same call gives the same bytes on the CPU. On CUDA (H200, torch 2.11) the first call of a process
differed from the later ones by at most 1 of 255 (cuDNN/cuBLAS picking kernels on first use; the
deterministic-algorithms switches did not change it); later calls were identical.

Only numpy and the standard library are imported at module level; torch, PIL and OpenCV when used.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from refcoco_edit.errors import InputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

logger = logging.getLogger(__name__)

VAE_FACTOR = 8  # Stable Diffusion's VAE downsamples by 8: working sides are multiples of this
CHANGE_THRESHOLD = 24  # of 255, on the largest channel difference (see the module docstring)
DEFAULT_FEATHER = 8  # pixels of the soft edge of the background restore
MAX_SEED = 2**63 - 1


class MaskResizedWarning(UserWarning):
    """The mask's size differed from the image's; it was resized with nearest neighbour."""


@dataclass
class Candidate:
    """One generated edit: the image at the source's size, how to reproduce it, and M_e."""

    image: PILImage  # RGB, the source's size
    seed: int
    params: dict  # everything needed to reproduce it (JSON-serialisable)
    model: str  # model name as given to the resolver ("opencv" for classical inpainting)
    edit_mask: np.ndarray  # (H, W) uint8 of 0 and 1
    score: float | None = None  # CLIP ranking score (100 x cosine) when ranked

    def __post_init__(self) -> None:
        self.edit_mask = np.asarray(self.edit_mask, dtype=np.uint8)


@dataclass
class PreparedInputs:
    """A checked request: the source and mask at the source's size and at the working size."""

    image: PILImage  # RGB, source size
    mask: np.ndarray  # (H, W) uint8 0/1, source size
    work_image: PILImage  # RGB, working size
    work_mask: np.ndarray  # (h, w) uint8 0/1, working size
    extras: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def work_size(self) -> tuple[int, int]:
        return self.work_image.size


# --------------------------------------------------------------------------------------------
# inputs


def as_rgb(image: Any) -> PILImage:
    """A PIL RGB image from a PIL image of any mode or a uint8 (H, W[, C]) array."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            raise InputError(f"an image array must be uint8, got {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise InputError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
        image = Image.fromarray(arr)
    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits first
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on black: what a transparent pixel shows is undefined; black is the usual choice.
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def as_mask(mask: Any) -> np.ndarray:
    """A (H, W) uint8 array of 0 and 1 from an array (non-zero inside) or a PIL image (> 127 inside)."""
    from PIL import Image

    if isinstance(mask, Image.Image):
        arr = np.asarray(mask.convert("L")) > 127
    else:
        arr = np.asarray(mask)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim != 2:
            raise InputError(f"a mask must be 2-D (H, W), got shape {arr.shape}")
        arr = arr != 0
    return arr.astype(np.uint8)


def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`mask` at `size` (width, height), nearest neighbour (every output pixel copies one input pixel)."""
    from PIL import Image

    if mask.shape[::-1] == tuple(size):
        return mask
    im = Image.fromarray(mask * np.uint8(255)).resize(size, Image.Resampling.NEAREST)
    return (np.asarray(im) > 127).astype(np.uint8)


def resize_mask_any(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`mask` at `size`; an output pixel is inside when any input pixel it covers is (area average > 0),
    so that a small object does not vanish when the image is shrunk."""
    import cv2

    if mask.shape[::-1] == tuple(size):
        return mask
    if size[0] >= mask.shape[1] and size[1] >= mask.shape[0]:
        return resize_mask_nearest(mask, size)
    area = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return (area > 1e-6).astype(np.uint8)


def round_to_multiple(value: float, multiple: int = VAE_FACTOR) -> int:
    """The nearest multiple of `multiple` (halves up), at least `multiple`."""
    return max(multiple, int(value / multiple + 0.5) * multiple)


def working_size(size: tuple[int, int], target: int | None = None, multiple: int = VAE_FACTOR) -> tuple[int, int]:
    """(width, height) the model works at: the source's size, or scaled so that the longer side is
    `target`, each side rounded to the nearest multiple of `multiple`."""
    w, h = size
    if target is not None:
        if target < multiple:
            raise InputError(f"size must be at least {multiple}, got {target}")
        scale = target / max(w, h)
        w, h = w * scale, h * scale
    return round_to_multiple(w, multiple), round_to_multiple(h, multiple)


def prepare_inputs(
    image: Any, mask: Any, *, size: int | None = None, multiple: int = VAE_FACTOR, resize: bool = True
) -> PreparedInputs:
    """Check and convert a request (see the module docstring). `resize=False` keeps the source's size
    as the working size (pipelines that need no multiple of 8)."""
    from PIL import Image

    image = as_rgb(image)
    mask = as_mask(mask)
    if mask.shape != (image.height, image.width):
        warnings.warn(
            f"mask of {mask.shape[1]}x{mask.shape[0]} resized to the image's {image.width}x{image.height} "
            "(nearest neighbour)",
            MaskResizedWarning,
            stacklevel=2,
        )
        mask = resize_mask_nearest(mask, image.size)
    inside = int(mask.sum())
    if inside == 0:
        raise InputError("the mask is empty: there is no region to edit")
    if inside == mask.size:
        raise InputError("the mask covers the whole image: nothing would be kept; draw the region to edit")
    work = working_size(image.size, size, multiple) if resize else image.size
    if work == image.size:
        work_image, work_mask = image, mask
    else:
        work_image = image.resize(work, Image.Resampling.LANCZOS)
        work_mask = resize_mask_any(mask, work)
    if work != image.size:
        logger.info("working at %dx%d for a %dx%d source", *work, *image.size)
    return PreparedInputs(image=image, mask=mask, work_image=work_image, work_mask=work_mask)


def to_source_size(image: PILImage, size: tuple[int, int]) -> PILImage:
    """A working-size result back at the source's (width, height)."""
    from PIL import Image

    return image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)


def seeds_for(seed: int, num: int) -> list[int]:
    """Candidate i gets seed + i: each candidate is reproducible alone from its own seed."""
    if num < 1:
        raise InputError(f"the number of candidates must be at least 1, got {num}")
    if not 0 <= seed <= MAX_SEED - num:
        raise InputError(f"seed must be in [0, {MAX_SEED - num}], got {seed}")
    return [seed + i for i in range(num)]


def check_steps(steps: int) -> int:
    if int(steps) < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    return int(steps)


def check_feather(feather: int) -> int:
    if feather < 0:
        raise InputError(f"feather must be >= 0, got {feather}")
    return feather


# --------------------------------------------------------------------------------------------
# devices


_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


def resolve_device(device: Any = None):
    """`torch.device`: the given one, else CUDA when present, else the CPU."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def resolve_dtype(device: Any, dtype: Any = None):
    """float32 on the CPU, float16 on CUDA (bfloat16 or float32 when asked for)."""
    import torch

    if dtype is None or dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise InputError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16")
    return getattr(torch, name)


def dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def cpu_generators(seeds: list[int]) -> list:
    """One CPU `torch.Generator` per seed: the same noise on every device."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def place(pipe: Any, device: Any, dtype: Any):
    """`pipe` with every component on `device` and in `dtype`, whatever dtypes its folder was saved in
    (`refcoco_edit.models.components.place_components`)."""
    from refcoco_edit.models.components import place_components

    return place_components(pipe, device, dtype)


def quiet_progress(pipe: Any, progress: bool) -> None:
    """Turn a diffusers pipeline's progress bar on or off."""
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=not progress)


def float_images_to_pil(images: np.ndarray) -> list:
    """(N, H, W, 3) floats in [0, 1] -> PIL images, rounded as diffusers' `numpy_to_pil` rounds."""
    from PIL import Image

    arr = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


# --------------------------------------------------------------------------------------------
# background restore and the edit mask


def _disk(radius: int) -> np.ndarray:
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """`mask` grown by `radius` pixels (elliptical structuring element)."""
    import cv2

    if radius <= 0:
        return mask.astype(np.uint8)
    return cv2.dilate(mask.astype(np.uint8), _disk(radius))


def feathered_alpha(mask: np.ndarray, feather: int) -> np.ndarray:
    """Blend weights in [0, 1]: 1 on the mask, falling linearly to 0 at `feather` pixels from it
    (Euclidean distance), exactly 0 from there on."""
    import cv2

    inside = mask.astype(bool)
    if feather <= 0:
        return inside.astype(np.float32)
    outside = (~inside).astype(np.uint8)
    dist = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.clip(1.0 - dist / float(feather), 0.0, 1.0).astype(np.float32)


def restore_background(
    source: Any, result: Any, mask: np.ndarray, feather: int = DEFAULT_FEATHER, *, alpha: np.ndarray | None = None
):
    """`result` inside `mask`, the source beyond `feather` pixels from it, a linear blend between.
    Pixels whose blend weight is 0 are copied, so they equal the source's exactly. `alpha`: the
    weights of `feathered_alpha(mask, feather)` when already computed."""
    from PIL import Image

    alpha = feathered_alpha(mask, feather) if alpha is None else alpha
    src = np.asarray(source)
    res = np.asarray(result)
    out = np.where((alpha >= 1.0)[:, :, None], res, src)
    ys, xs = np.nonzero((alpha > 0.0) & (alpha < 1.0))  # only the soft edge needs arithmetic
    a = alpha[ys, xs][:, None]
    out[ys, xs] = np.clip(a * res[ys, xs] + (1.0 - a) * src[ys, xs] + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def changed_pixels(source: Any, result: Any, threshold: int = CHANGE_THRESHOLD) -> np.ndarray:
    """(H, W) bool: the largest channel difference exceeds `threshold` (0..255)."""
    import cv2

    src = np.ascontiguousarray(source, dtype=np.uint8)
    res = np.ascontiguousarray(result, dtype=np.uint8)
    if src.shape != res.shape:
        raise ValueError(f"source {src.shape} and result {res.shape} differ in size")
    diff = cv2.absdiff(src, res)
    return np.maximum(np.maximum(diff[:, :, 0], diff[:, :, 1]), diff[:, :, 2]) > threshold


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every background region that does not touch the border filled."""
    import cv2

    m = mask.astype(np.uint8)
    h, w = m.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = m
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (m.astype(bool) | holes).astype(np.uint8)


def edit_mask(
    source: Any,
    result: Any,
    requested: np.ndarray,
    *,
    margin: int,
    threshold: int = CHANGE_THRESHOLD,
    close_radius: int = 2,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """M_e: the requested region refined by where pixels changed (see the module docstring).
    `allowed`: `dilate(requested, margin)` when already computed."""
    import cv2

    allowed = (dilate(requested, margin) if allowed is None else allowed).astype(bool)
    changed = changed_pixels(source, result, threshold) & allowed
    if not changed.any():
        return requested.astype(np.uint8)
    m = changed.astype(np.uint8)
    if close_radius > 0:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _disk(close_radius))
    m = fill_holes(m) & allowed.astype(np.uint8)
    return m.astype(np.uint8)


def _box(region: np.ndarray, pad: int) -> tuple[slice, slice]:
    """The bounding box of `region` grown by `pad` pixels, clipped to the array."""
    ys, xs = np.nonzero(region)
    h, w = region.shape
    return (slice(max(int(ys.min()) - pad, 0), min(int(ys.max()) + 1 + pad, h)),
            slice(max(int(xs.min()) - pad, 0), min(int(xs.max()) + 1 + pad, w)))


def finish_candidates(
    prep: PreparedInputs,
    images: list,
    seeds: list[int],
    params: dict,
    model: str,
    *,
    restore: bool,
    feather: int,
    close_radius: int = 2,
) -> list[Candidate]:
    """Working-size results -> candidates at the source's size, background restored when asked, with
    M_e. The edit mask's margin is the feather plus one latent cell (8 working pixels) at the source's
    scale: latent blending can change pixels up to that far from the mask.

    Both steps only touch the mask's box grown by that margin (and by room for the closing, so that it
    sees the same neighbourhood as on the whole image), and the blend weights and the dilation are
    computed once for all candidates: the results equal `restore_background` and `edit_mask` on the
    whole image (a test checks it), at a fraction of the cost for a small object in a large image."""
    from PIL import Image

    w, h = prep.work_size
    scale = max(prep.size[0] / w, prep.size[1] / h)
    margin = max(feather, 0) + math.ceil(VAE_FACTOR * scale)
    box = _box(prep.mask, margin + close_radius + 2)  # holds the whole dilation, and room for the closing
    src = np.asarray(prep.image)
    allowed = dilate(prep.mask[box], margin)
    alpha = feathered_alpha(prep.mask[box], feather) if restore else None
    out = []
    for i, (seed, img) in enumerate(zip(seeds, images)):
        img = to_source_size(img, prep.size)
        if restore:
            arr = src.copy()
            arr[box] = np.asarray(restore_background(src[box], np.asarray(img)[box], prep.mask[box], feather,
                                                     alpha=alpha))
            img = Image.fromarray(arr)
        m_e = np.zeros(prep.mask.shape, np.uint8)
        m_e[box] = edit_mask(src[box], np.asarray(img)[box], prep.mask[box], margin=margin, allowed=allowed,
                             close_radius=close_radius)
        out.append(Candidate(
            image=img, seed=seed, params={**params, "seed": seed, "batch_index": i}, model=model, edit_mask=m_e,
        ))
    return out
