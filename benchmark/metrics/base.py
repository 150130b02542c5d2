"""What every metric shares: the per-sample input and the Metric base class (results: `result`).

A metric is fed batches of `MetricInput` through `update`, keeps one value per sample and output
(so that bootstrap intervals and per-group tables can be computed at the end), and `compute` turns
those values into `MetricResult`s. A value of `None` means "not applicable to this sample" (an empty
edit mask for a background-only metric, a missing caption for `clip_t`); such samples are left out of
the means and counted in no `n`.

Scoring size: every metric sees the method's output at the source image's size. An output of another
size is resized with bicubic resampling (Pillow's `Image.BICUBIC`), which is what MagicBrush's
evaluation does (`gen_img.resize(gt_img.size)`, bicubic being Pillow's default), so that `l2_bg`
with an empty mask reproduces MagicBrush's L2.

Only numpy and Pillow are imported here: the registry (and through it `rie-bench list`) imports this
module, and models are loaded only when a metric first scores a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from benchmark.metrics.result import MetricResult
from benchmark.metrics.stats import summarize
from refcoco_edit.errors import InputError, ModelNotAvailableError

logger = logging.getLogger(__name__)


def as_rgb_image(image: Any, what: str = "image") -> Image.Image:
    """A PIL RGB image from a PIL image of any mode or an HxWx3 uint8 array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return Image.fromarray(image, mode="RGB")
    raise InputError(f"{what} must be a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")


def as_binary_mask(mask: Any, size_hw: tuple[int, int], what: str = "edit mask") -> np.ndarray:
    """An HxW uint8 0/1 array of the given size; bool arrays and 0/1 integer arrays are accepted."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2-D HxW array, got shape {arr.shape}")
    if tuple(arr.shape) != tuple(size_hw):
        raise InputError(f"{what} has shape {arr.shape} but the source image is {size_hw[0]}x{size_hw[1]} (HxW)")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise InputError(f"{what} must hold only 0 and 1, found values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint8, copy=False)


def as_rgb(image: Any, what: str = "image") -> Image.Image | np.ndarray:
    """A PIL RGB image (other modes converted) or an HxWx3 uint8 array, kept as given."""
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
            return image
        raise InputError(f"{what} as an array must be HxWx3 uint8, got shape {image.shape} {image.dtype}")
    return as_rgb_image(image, what)


def _size_hw(image: Image.Image | np.ndarray) -> tuple[int, int]:
    return (int(image.shape[0]), int(image.shape[1])) if isinstance(image, np.ndarray) else (image.height, image.width)


@dataclass(eq=False)
class MetricInput:
    """One scored sample: the method's output beside the dataset's source, masks and texts.

    `output` and `source` are PIL images (converted to RGB) or HxWx3 uint8 arrays (kept without a
    copy, for callers that already hold decoded arrays). `edit_mask` (M_e) and `source_mask` (M) are
    HxW 0/1 arrays at the source's size. `output` may be of any size; metrics read it through
    `output_image` / `output_array`, resized to the source's size with bicubic resampling (see the
    module docstring).
    """

    output: Image.Image | np.ndarray
    source: Image.Image | np.ndarray
    edit_mask: np.ndarray
    source_mask: np.ndarray | None = None
    prompt: str = ""
    edit_text: str = ""
    referring_text: str = ""
    target_caption: str | None = None
    edit_type: str = ""
    pipeline: str = ""
    sample_id: str = ""
    reference: Image.Image | np.ndarray | None = None

    def __post_init__(self) -> None:
        self.output = as_rgb(self.output, "output image")
        self.source = as_rgb(self.source, "source image")
        hw = self.size_hw
        if self.reference is not None:
            self.reference = as_rgb(self.reference, "reference edit")
            if _size_hw(self.reference) != hw:
                raise InputError(f"reference edit is {_size_hw(self.reference)} (h, w), the source {hw}")
        self.edit_mask = as_binary_mask(self.edit_mask, hw, "edit mask M_e")
        if self.source_mask is not None:
            self.source_mask = as_binary_mask(self.source_mask, hw, "source mask M")

    @property
    def size_hw(self) -> tuple[int, int]:
        """(height, width) of the source: the size at which everything is scored."""
        return _size_hw(self.source)

    @cached_property
    def output_image(self) -> Image.Image:
        """The output as a PIL image at the source's size (bicubic when it must be resized)."""
        out = self.output if isinstance(self.output, Image.Image) else Image.fromarray(self.output)
        h, w = self.size_hw
        return out if out.size == (w, h) else out.resize((w, h), Image.BICUBIC)

    @cached_property
    def output_array(self) -> np.ndarray:
        """HxWx3 uint8 output at the source's size."""
        if isinstance(self.output, np.ndarray) and _size_hw(self.output) == self.size_hw:
            return self.output
        return np.asarray(self.output_image)

    @cached_property
    def reference_array(self) -> np.ndarray | None:
        """HxWx3 uint8 reference edit, None without one."""
        return None if self.reference is None else np.asarray(self.reference)

    @cached_property
    def source_image(self) -> Image.Image:
        return self.source if isinstance(self.source, Image.Image) else Image.fromarray(self.source)

    @cached_property
    def source_array(self) -> np.ndarray:
        return self.source if isinstance(self.source, np.ndarray) else np.asarray(self.source)


class Metric:
    """Base class: subclasses set the class attributes and implement `score_batch`.

    - `name`: the registry name; `outputs`: the result names it produces (default `(name,)`);
    - `higher_is_better`: one flag for all outputs;
    - `version`: the definition's version, written beside every result (results.json); raised whenever a
      change to the metric would change its numbers, so that old and new results are told apart;
    - `requires`: model names (resolver names) it loads; instances may set their own;
    - `setup()`: loads models on first use; a `ModelNotAvailableError` there marks the metric
      unavailable (with the error's message as reason) instead of failing the run;
    - `score_batch(batch)`: {output: [value or None per sample]}.
    """

    name: ClassVar[str] = ""
    outputs: ClassVar[tuple[str, ...]] = ()
    higher_is_better: ClassVar[bool] = True
    description: ClassVar[str] = ""
    version: ClassVar[int] = 1
    requires: tuple[str, ...] = ()
    # The reason given when a run has no applicable sample at all.
    empty_reason: ClassVar[str] = "no sample to which the metric applies"

    def __init__(self, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> None:
        self.n_resamples = n_resamples
        self.confidence = confidence
        self.seed = seed
        self._ready = False
        self._unavailable: str | None = None
        self.reset()

    # ---- names
    @classmethod
    def output_names(cls) -> tuple[str, ...]:
        return cls.outputs or (cls.name,)

    # ---- state
    def reset(self) -> None:
        """Forget every recorded sample (loaded models are kept)."""
        self._values: dict[str, list[float | None]] = {out: [] for out in self.output_names()}
        self._edit_types: list[str] = []
        self._pipelines: list[str] = []
        self._sample_ids: list[str] = []

    def __len__(self) -> int:
        return len(self._sample_ids)

    # ---- availability
    def setup(self) -> None:
        """Load what the metric needs; raise ModelNotAvailableError when weights are missing."""

    def availability(self) -> str | None:
        """None when the metric can run, else the reason (checks settings, loads nothing heavy)."""
        return self._unavailable

    @property
    def available(self) -> bool:
        """Load the metric's models if not done yet; False when they cannot be loaded (the reason
        is then in `availability()` and in the computed results)."""
        return self._ensure_ready()

    def _ensure_ready(self) -> bool:
        if self._unavailable is not None:
            return False
        if not self._ready:
            try:
                self.setup()
            except ModelNotAvailableError as exc:
                self._unavailable = str(exc)
                logger.warning("metric %s is unavailable: %s", self.name, exc)
                return False
            self._ready = True
        return True

    # ---- scoring
    def score_batch(self, batch: Sequence[MetricInput]) -> dict[str, list[float | None]]:
        raise NotImplementedError

    def update(self, batch: Sequence[MetricInput] | MetricInput) -> dict[str, list[float | None]]:
        """Score a batch, record the values and return them ({output: [value or None]})."""
        if isinstance(batch, MetricInput):
            batch = [batch]
        batch = list(batch)
        if not batch:
            return {out: [] for out in self.output_names()}
        if self._ensure_ready():
            scores = self.score_batch(batch)
        else:
            scores = {out: [None] * len(batch) for out in self.output_names()}
        for out in self.output_names():
            vals = scores[out]
            if len(vals) != len(batch):
                raise RuntimeError(f"metric {self.name}: {len(vals)} values for {len(batch)} samples")
            self._values[out].extend(None if v is None else float(v) for v in vals)
        self._edit_types.extend(s.edit_type for s in batch)
        self._pipelines.extend(s.pipeline for s in batch)
        self._sample_ids.extend(s.sample_id for s in batch)
        return {out: list(scores[out]) for out in self.output_names()}

    def per_sample(self) -> list[dict[str, Any]]:
        """One row per recorded sample: sample_id, edit_type, pipeline and each output's value."""
        rows = []
        for i, sid in enumerate(self._sample_ids):
            row: dict[str, Any] = {"sample_id": sid, "edit_type": self._edit_types[i], "pipeline": self._pipelines[i]}
            for out in self.output_names():
                row[out] = self._values[out][i]
            rows.append(row)
        return rows

    def record(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add already-scored samples (rows as `per_sample()` gives them, e.g. read back from a
        samples.jsonl when a run resumes, or gathered from other processes) without rescoring."""
        for row in rows:
            for out in self.output_names():
                value = row.get(out)
                self._values[out].append(None if value is None else float(value))
            self._edit_types.append(str(row.get("edit_type", "")))
            self._pipelines.append(str(row.get("pipeline", "")))
            self._sample_ids.append(str(row.get("sample_id", "")))

    def compute(self) -> dict[str, MetricResult]:
        """{output name: MetricResult} over every sample recorded since the last reset."""
        results: dict[str, MetricResult] = {}
        for out in self.output_names():
            if self._unavailable is not None:
                results[out] = MetricResult(out, self.higher_is_better, available=False, reason=self._unavailable,
                                            version=self.version)
                continue
            results[out] = summarize(
                out,
                self._values[out],
                higher_is_better=self.higher_is_better,
                edit_types=self._edit_types,
                pipelines=self._pipelines,
                n_resamples=self.n_resamples,
                confidence=self.confidence,
                seed=self.seed,
                empty_reason=self.empty_reason,
            )
            results[out].version = self.version
        return results


def stacked_groups(
    batch: Sequence[MetricInput], chunk_size: int = 1
) -> list[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]]:
    """The batch as stacks of same-size samples: (indices, outputs NxHxWx3, sources NxHxWx3,
    edit masks NxHxW), at most `chunk_size` samples per stack, so array metrics run vectorised
    over a stack whatever mix of image sizes a dataset has."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, sample in enumerate(batch):
        by_size.setdefault(sample.size_hw, []).append(i)
    chunk_size = max(1, chunk_size)
    groups = []
    for indices in by_size.values():
        for start in range(0, len(indices), chunk_size):
            idx = indices[start : start + chunk_size]
            if len(idx) == 1:  # a view, no copy
                one = batch[idx[0]]
                groups.append((idx, one.output_array[None], one.source_array[None], one.edit_mask[None]))
                continue
            groups.append(
                (
                    idx,
                    np.stack([batch[i].output_array for i in idx]),
                    np.stack([batch[i].source_array for i in idx]),
                    np.stack([batch[i].edit_mask for i in idx]),
                )
            )
    return groups
