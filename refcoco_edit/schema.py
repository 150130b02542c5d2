"""The one definition of a RefCOCO-Edit sample, and the Hugging Face `Features` derived from it.

Every other module (store, export, app, trainer, benchmark) imports these names; nobody re-declares
the fields. Images are PIL images in memory; masks are (H, W) uint8 arrays of 0 and 1 in memory,
COCO RLE in the store and 8-bit "L" PNGs in the exported dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image

EDIT_TYPES: tuple[str, ...] = ("replace", "remove", "attribute", "add", "other")
# The model pipelines, name -> "module:Class" (the lazy registry `refcoco_edit.pipelines.PIPELINES`
# reads this table). It lives here because a sample's `pipeline` field takes these names: adding a
# pipeline is its file and one line here, and the store, the exporter and the dataset features accept
# it with no other change.
PIPELINE_CLASSES: dict[str, str] = {
    "composition": "refcoco_edit.pipelines.composition:CompositionPipeline",  # Paint-by-Example
    "region_edit": "refcoco_edit.pipelines.region_edit:RegionEditPipeline",  # Blended Latent Diffusion
    "inpaint": "refcoco_edit.pipelines.inpaint:InpaintPipeline",  # diffusion removal
    "classical_inpaint": "refcoco_edit.pipelines.classical_inpaint:ClassicalInpaintPipeline",  # OpenCV removal
}
# Every value of a sample's `pipeline`: the model pipelines, `manual` (drawn by a person) and
# `synthetic` (rendered ground truth: RefShapes edits and stage-1 samples, no model involved). The
# exported ClassLabel numbers them in this order, so the first six never move and new pipelines are
# appended after them (a dataset exported earlier keeps its label numbers).
_FIRST_PIPELINES = ("composition", "region_edit", "inpaint", "classical_inpaint", "manual", "synthetic")
PIPELINES: tuple[str, ...] = _FIRST_PIPELINES + tuple(n for n in PIPELINE_CLASSES if n not in _FIRST_PIPELINES)
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
    source_image: Image  # RGB
    edited_image: Image  # RGB, same size
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


def span_problems(prompt: str, parts: list[tuple[str, list[Span], str]]) -> list[str]:
    """Why the spans of `parts` ((name, spans, text) each) do not mark exactly their texts in `prompt`.

    Each span must be a [start, end) pair of integers inside the prompt, with no white space at its
    ends; a part's spans, joined by one space, must give its text; no two spans may overlap.
    """
    out: list[str] = []
    n = len(prompt)
    marked: list[tuple[int, int, str]] = []
    for name, spans, text in parts:
        if not spans:
            out.append(f"no {name} part")
            continue
        for sp in spans:
            if len(sp) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in sp):
                out.append(f"{name} span {sp!r} is not a pair of integers")
                break
            s, e = int(sp[0]), int(sp[1])
            if not 0 <= s < e <= n:
                out.append(f"{name} span {[s, e]} is outside the prompt (length {n}) or empty")
                break
            piece = prompt[s:e]
            if piece != piece.strip():
                out.append(f"{name} span {[s, e]} starts or ends with white space: {piece!r}")
            marked.append((s, e, name))
        else:
            if span_text(prompt, spans) != text:
                out.append(f"{name} spans give {span_text(prompt, spans)!r}, not {text!r}")
    marked.sort()
    for (s1, e1, n1), (s2, e2, n2) in zip(marked, marked[1:]):
        if s2 < e1:
            out.append(f"{n1} span [{s1}, {e1}] overlaps {n2} span [{s2}, {e2}]")
    return out


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
    problems += span_problems(sample.prompt, [("referring", sample.referring_spans, sample.referring_text),
                                              ("edit", sample.edit_spans, sample.edit_text)])
    size = getattr(sample.source_image, "size", None)
    if size is None:
        problems.append("source_image is missing")
    else:
        w, h = size
        if getattr(sample.edited_image, "size", None) != size:
            edited_size = getattr(sample.edited_image, "size", None)
            problems.append(f"edited_image size {edited_size} differs from source {size}")
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
