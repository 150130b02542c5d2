"""CLIP metrics: clip_sim_fg and clip_sim_fg_ref (edited region vs the edit text, vs the referring
text) and clip_t (whole output vs target caption).

All are 100 x the cosine between a CLIP image embedding and a CLIP text embedding (the projected
`get_image_features` / `get_text_features` outputs), not clamped at 0, averaged over samples.

- `clip_sim_fg` and `clip_sim_fg_ref` (one metric, two outputs): the image is the crop of the output
  (at the source's size) around the bounding box of the sample's M_e, the box grown by `margin`
  (0.1 by default) x its width/height on each side and clipped to the image, embedded once for both.
  `clip_sim_fg` compares it with P_e, the edit part of the prompt (`text="edit"`, the default; or
  the whole prompt with `"prompt"`, or P_r with `"referring"`); `clip_sim_fg_ref` always compares it
  with P_r, the referring part. The paper describes CLIP-Sim_fg once as the similarity of the edited
  region to P_r and then in words that fit P_e; both readings are reported so that either can be
  matched. A sample with an empty M_e, or an empty text, gets no value for that output.
- `clip_t`: the whole output against the sample's target caption; samples without a caption get
  no value, and a run without any caption reports the metric as unavailable.

CLIP comes from the model resolver (`refcoco_edit.models.resolver`), `clip-vit-l14` by default; images go
through the model's own `CLIPProcessor` (resize, centre crop, normalise), texts through its
tokenizer (padded, truncated to CLIP's 77 tokens). A loaded model is shared by every metric in the
process that asks for the same source and device (`get_clip`). Images and texts are embedded in
batches of `batch_size`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmark.metrics.base import Metric, MetricInput, as_binary_mask, as_rgb_image

logger = logging.getLogger(__name__)

DEFAULT_CLIP = "clip-vit-l14"
DEFAULT_MARGIN = 0.1
TEXT_FIELDS = {"edit": "edit_text", "prompt": "prompt", "referring": "referring_text"}

_CACHE: dict[tuple[str, str], ClipBackbone] = {}


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ClipBackbone:
    """A loaded CLIP model and processor that embeds PIL images and texts into unit vectors."""

    def __init__(self, model: Any, processor: Any, device: str, source: str = "", batch_size: int = 32) -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = device
        self.source = source
        self.batch_size = batch_size

    @property
    def projection_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @staticmethod
    def _features(out: Any) -> Any:
        # transformers < 5 returns a tensor, >= 5 a model output whose pooler_output is projected.
        return out if hasattr(out, "norm") else out.pooler_output

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """N x D float32 array of L2-normalised image embeddings."""
        import torch

        chunks = []
        for start in range(0, len(images), self.batch_size):
            part = [as_rgb_image(im) for im in images[start : start + self.batch_size]]
            pixels = self.processor.image_processor(images=part, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                feats = self._features(self.model.get_image_features(pixel_values=pixels.to(self.device)))
            chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.projection_dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N x D float32 array of L2-normalised text embeddings."""
        import torch

        tokenizer = self.processor.tokenizer
        max_len = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            enc = tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            with torch.inference_mode():
                feats = self._features(
                    self.model.get_text_features(
                        input_ids=enc["input_ids"].to(self.device),
                        attention_mask=enc["attention_mask"].to(self.device),
                    )
                )
            chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.projection_dim), np.float32)


def get_clip(
    name: str = DEFAULT_CLIP,
    overrides: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int = 32,
) -> ClipBackbone:
    """The CLIP model `name` from the resolver, loaded once per (source, device) and shared.

    Raises `ModelNotAvailableError` when the resolver has no source or the source cannot be loaded.
    """
    from refcoco_edit.models.resolver import load_pretrained, resolve

    device = device or default_device()
    source = resolve(name, overrides).source
    key = (source, device)
    if key not in _CACHE:

        def loader(src: str) -> tuple[Any, Any]:
            from transformers import CLIPModel, CLIPProcessor

            from refcoco_edit.models.components import quiet_libraries

            with quiet_libraries():  # scoring prints its own progress; no loading bars between its lines
                return CLIPModel.from_pretrained(src), CLIPProcessor.from_pretrained(src)

        logger.info("loading CLIP %s from %s on %s", name, source, device)
        model, processor = load_pretrained(name, loader, overrides)
        _CACHE[key] = ClipBackbone(model, processor, device, source=source)
    backbone = _CACHE[key]
    backbone.batch_size = batch_size
    return backbone


def clear_clip_cache() -> None:
    """Drop the loaded CLIP models (frees memory between runs)."""
    _CACHE.clear()


def mask_box(mask: np.ndarray, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom), right/bottom exclusive, of the mask's bounding box grown by
    `margin` x its width/height on each side and clipped to the image; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    top, bottom, left, right = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    dy, dx = margin * (bottom - top), margin * (right - left)
    return (
        max(0, int(np.floor(left - dx))),
        max(0, int(np.floor(top - dy))),
        min(w, int(np.ceil(right + dx))),
        min(h, int(np.ceil(bottom + dy))),
    )


def crop_around_mask(image: Any, mask: Any, margin: float = DEFAULT_MARGIN) -> Any:
    """The crop of `image` around `mask`'s box (see `mask_box`); None for an empty mask."""
    image = as_rgb_image(image)
    box = mask_box(as_binary_mask(mask, (image.height, image.width)), margin)
    return None if box is None else image.crop(box)


def text_similarity(backbone: ClipBackbone, image_emb: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """100 x cosine of each row of `image_emb` (unit image embeddings) with its text; repeated texts
    are embedded once."""
    if len(image_emb) != len(texts):
        raise ValueError(f"{len(image_emb)} image embeddings but {len(texts)} texts")
    if not len(texts):
        return np.zeros(0)
    unique = list(dict.fromkeys(texts))
    text_emb = backbone.embed_texts(unique)
    where = {t: i for i, t in enumerate(unique)}
    rows = np.array([where[t] for t in texts])
    return 100.0 * np.einsum("nd,nd->n", np.asarray(image_emb, np.float64), text_emb[rows].astype(np.float64))


def clip_similarity(backbone: ClipBackbone, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
    """100 x cosine of each (image, text) pair; repeated texts are embedded once."""
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    if not images:
        return np.zeros(0)
    return text_similarity(backbone, backbone.embed_images(images), texts)


# --------------------------------------------------------------------------------------------
# plain functions


def clip_sim_fg(
    output: Any,
    edit_mask: Any,
    text: str,
    *,
    clip_model: str = DEFAULT_CLIP,
    margin: float = DEFAULT_MARGIN,
    overrides: Mapping[str, str] | None = None,
    device: str | None = None,
) -> float | None:
    """100 x cos(CLIP(crop of `output` around `edit_mask`), CLIP(text)); None for an empty mask.
    `clip_sim_fg` of a sample is this with its P_e as `text`, `clip_sim_fg_ref` with its P_r.

    `output` must already be at the mask's size (MetricInput resizes it for the metric class).
    """
    crop = crop_around_mask(output, edit_mask, margin)
    if crop is None or not text.strip():
        return None
    return float(clip_similarity(get_clip(clip_model, overrides, device), [crop], [text])[0])


def clip_t(
    output: Any,
    caption: str | None,
    *,
    clip_model: str = DEFAULT_CLIP,
    overrides: Mapping[str, str] | None = None,
    device: str | None = None,
) -> float | None:
    """100 x cos(CLIP(output), CLIP(caption)); None without a caption."""
    if not caption or not caption.strip():
        return None
    return float(clip_similarity(get_clip(clip_model, overrides, device), [as_rgb_image(output)], [caption])[0])


# --------------------------------------------------------------------------------------------
# Metric classes


class _ClipMetric(Metric):
    def __init__(
        self,
        *,
        clip_model: str = DEFAULT_CLIP,
        overrides: Mapping[str, str] | None = None,
        device: str | None = None,
        batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = clip_model
        self.overrides = dict(overrides or {})
        self.device = device
        self.batch_size = batch_size
        self.requires = (clip_model,)
        self.backbone: ClipBackbone | None = None

    def setup(self) -> None:
        self.backbone = get_clip(self.model_name, self.overrides, self.device, self.batch_size)

    def availability(self) -> str | None:
        """None when the CLIP model resolves (without loading it), else the reason."""
        if self._unavailable is not None:
            return self._unavailable
        from refcoco_edit.errors import ModelNotAvailableError
        from refcoco_edit.models.resolver import resolve

        try:
            resolve(self.model_name, self.overrides, build=False)
        except ModelNotAvailableError as exc:
            return str(exc)
        return None

    def _pairs(self, batch: Sequence[MetricInput]) -> tuple[list[int], list[Any], list[str]]:
        raise NotImplementedError

    def score_batch(self, batch: Sequence[MetricInput]) -> dict[str, list[float | None]]:
        assert self.backbone is not None
        idx, images, texts = self._pairs(batch)
        values: list[float | None] = [None] * len(batch)
        for i, v in zip(idx, clip_similarity(self.backbone, images, texts)):
            values[i] = float(v)
        return {self.name: values}


class ClipSimForeground(_ClipMetric):
    """`clip_sim_fg` (crop vs P_e, or the text chosen by `text`) and `clip_sim_fg_ref` (crop vs P_r):
    one crop around M_e (grown by `margin`), embedded once, two texts (see the module docstring)."""

    name = "clip_sim_fg"
    outputs = ("clip_sim_fg", "clip_sim_fg_ref")
    higher_is_better = True
    description = ("100 x CLIP cosine between the crop around the edit mask (grown by 10 %) and P_e "
                   "(clip_sim_fg) or P_r (clip_sim_fg_ref)")
    empty_reason = "no sample has both a non-empty edit mask and a non-empty text"

    def __init__(self, *, margin: float = DEFAULT_MARGIN, text: str = "edit", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if text not in TEXT_FIELDS:
            raise ValueError(f"clip_sim_fg text must be one of {', '.join(TEXT_FIELDS)}, got {text!r}")
        if margin < 0:
            raise ValueError(f"clip_sim_fg margin must be >= 0, got {margin}")
        self.margin = margin
        self.text = text

    def score_batch(self, batch: Sequence[MetricInput]) -> dict[str, list[float | None]]:
        assert self.backbone is not None
        fields = {"clip_sim_fg": TEXT_FIELDS[self.text], "clip_sim_fg_ref": TEXT_FIELDS["referring"]}
        values: dict[str, list[float | None]] = {out: [None] * len(batch) for out in fields}
        idx, crops = [], []
        for i, sample in enumerate(batch):
            box = mask_box(sample.edit_mask, self.margin)
            if box is None or not any((getattr(sample, f) or "").strip() for f in fields.values()):
                continue
            idx.append(i)
            crops.append(sample.output_image.crop(box))
        if not crops:
            return values
        image_emb = self.backbone.embed_images(crops)  # once for both texts
        for out, field in fields.items():
            rows = [(k, getattr(batch[i], field) or "") for k, i in enumerate(idx)]
            rows = [(k, t) for k, t in rows if t.strip()]
            if not rows:
                continue
            sims = text_similarity(self.backbone, image_emb[[k for k, _ in rows]], [t for _, t in rows])
            for (k, _), v in zip(rows, sims):
                values[out][idx[k]] = float(v)
        return values


class ClipText(_ClipMetric):
    name = "clip_t"
    higher_is_better = True
    description = "100 x CLIP cosine between the whole output and the target caption"
    empty_reason = "no sample has a target caption"

    def _pairs(self, batch: Sequence[MetricInput]) -> tuple[list[int], list[Any], list[str]]:
        idx, images, texts = [], [], []
        for i, sample in enumerate(batch):
            caption = sample.target_caption or ""
            if not caption.strip():
                continue
            idx.append(i)
            images.append(sample.output_image)
            texts.append(caption)
        return idx, images, texts
