"""The one definition of a RefCOCO-Edit sample, and the Hugging Face `Features` derived from it.

Every other module (store, export, app, trainer, benchmark) imports these names; nobody re-declares
the fields. Images are PIL images in memory; masks are (H, W) uint8 arrays of 0 and 1 in memory,
COCO RLE in the store and 8-bit "L" PNGs in the exported dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

EDIT_TYPES: tuple[str, ...] = ("replace", "remove", "attribute", "add", "other")
# composition: Paint-by-Example; region_edit: Blended Latent Diffusion; inpaint: diffusion removal;
# classical_inpaint: OpenCV removal; manual: drawn by a person; synthetic: rendered ground truth
# (RefShapes edits and stage-1 samples), no model involved.
PIPELINES: tuple[str, ...] = ("composition", "region_edit", "inpaint", "classical_inpaint", "manual", "synthetic")
STATUSES: tuple[str, ...] = ("draft", "candidate", "accepted", "rejected")
SPLITS: tuple[str, ...] = ("train", "val", "test", "testA", "testB")

Span = list[int]  # [start, end): prompt[start:end] is the words of a part


@dataclass
class Sample:
    """A RefCOCO-Edit sample: source, reference edit, masks, prompt with spans, provenance."""

    sample_id: str
    image_id: int
    ref_id: int
    ann_id: int
    split: str
    source_image: Any  # PIL.Image.Image, RGB
    edited_image: Any  # PIL.Image.Image, RGB, same size
    source_mask: np.ndarray  # M: the referred object
    edit_mask: np.ndarray  # M_e: the area the edit changed
    prompt: str
    referring_text: str
    edit_text: str
    referring_spans: list[Span]
    edit_spans: list[Span]
    edit_type: str
    target: str = ""
    pipeline: str = "manual"
    generation: dict = field(default_factory=dict)  # model, seed, steps, scales, prompt actually sent
    annotator: str = ""
    reviewer: str = ""
    status: str = "draft"
    created_at: str = ""
    updated_at: str = ""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


IMAGE_FIELDS = ("source_image", "edited_image")
MASK_FIELDS = ("source_mask", "edit_mask")


def features():
    """The Hugging Face `Features` of an exported RefCOCO-Edit split."""
    from datasets import ClassLabel, Features, Image, List, Value

    spans = List(List(Value("int32")))
    text = Value("string")
    return Features(
        {
            "sample_id": text,
            "image_id": Value("int64"),
            "ref_id": Value("int64"),
            "ann_id": Value("int64"),
            "split": text,
            "source_image": Image(),
            "edited_image": Image(),
            "source_mask": Image(),
            "edit_mask": Image(),
            "prompt": text,
            "referring_text": text,
            "edit_text": text,
            "referring_spans": spans,
            "edit_spans": spans,
            "edit_type": ClassLabel(names=list(EDIT_TYPES)),
            "target": text,
            "pipeline": ClassLabel(names=list(PIPELINES)),
            "generation": text,  # JSON: model, seed, steps, guidance scales, prompt actually sent
            "annotator": text,
            "reviewer": text,
            "status": text,
            "created_at": text,
            "updated_at": text,
        }
    )


def span_text(prompt: str, spans: list[Span]) -> str:
    """The words a list of spans marks, parts joined by one space."""
    return " ".join(prompt[s:e] for s, e in spans)


def span_problems(prompt: str, spans: list[Span], text: str, what: str) -> list[str]:
    """Why `spans` do not mark exactly `text` in `prompt` (empty when they do)."""
    problems = []
    for span in spans:
        if len(span) != 2 or not all(isinstance(v, (int, np.integer)) for v in span):
            return [f"{what} span {span!r} is not a [start, end] pair of integers"]
        s, e = span
        if not 0 <= s < e <= len(prompt):
            problems.append(f"{what} span {span!r} lies outside the prompt of {len(prompt)} characters")
    if problems:
        return problems
    if not spans:
        return [f"{what} has no span"]
    if span_text(prompt, spans) != text:
        problems.append(f"{what} spans mark {span_text(prompt, spans)!r}, not {text!r}")
    return problems


def validate(sample: Sample) -> list[str]:
    """Every reason `sample` may not be published; an empty list means it is sound."""
    problems: list[str] = []
    if sample.edit_type not in EDIT_TYPES:
        problems.append(f"edit_type {sample.edit_type!r} is not one of {', '.join(EDIT_TYPES)}")
    if sample.pipeline not in PIPELINES:
        problems.append(f"pipeline {sample.pipeline!r} is not one of {', '.join(PIPELINES)}")
    if sample.status not in STATUSES:
        problems.append(f"status {sample.status!r} is not one of {', '.join(STATUSES)}")
    if not sample.referring_text.strip():
        problems.append("the prompt has no referring part")
    problems += span_problems(sample.prompt, sample.referring_spans, sample.referring_text, "referring")
    problems += span_problems(sample.prompt, sample.edit_spans, sample.edit_text, "edit")
    marked = sorted(tuple(s) for s in sample.referring_spans + sample.edit_spans if len(s) == 2)
    if any(a[1] > b[0] for a, b in zip(marked, marked[1:])):
        problems.append("referring and edit spans overlap")
    size = getattr(sample.source_image, "size", None)
    if size is None:
        problems.append("source_image is missing")
    else:
        w, h = size
        if getattr(sample.edited_image, "size", None) != size:
            problems.append(f"edited_image size {getattr(sample.edited_image, 'size', None)} differs from source {size}")
        for name in MASK_FIELDS:
            m = np.asarray(getattr(sample, name))
            if m.shape != (h, w):
                problems.append(f"{name} has shape {m.shape}, the image is {h}x{w}")
            elif not np.isin(m, (0, 1)).all():
                problems.append(f"{name} is not binary (values other than 0 and 1)")
        if np.asarray(sample.source_mask).shape == (h, w) and not np.asarray(sample.source_mask).any():
            problems.append("source_mask is empty")
        if np.asarray(sample.edit_mask).shape == (h, w) and not np.asarray(sample.edit_mask).any():
            problems.append("edit_mask is empty but the edit is not a no-op")
    return problems
