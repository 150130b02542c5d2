"""The annotator's session state and the checks every action starts with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotation_app.auth import ANNOTATE, require_role
from annotation_app.errors import StateError

Progress = Callable[..., Any] | None
REGION_KINDS = ("object", "box", "grow")
GROW_PX = 8
MAX_STEPS = 500


@dataclass
class AnnotateState:
    """One annotator's session: the item on screen and the work on it (no images: those are re-read)."""

    ref_id: int | None = None  # the ref the queue suggested
    image_id: int | None = None
    ann_id: int | None = None  # the object picked as the source
    picked_ref: int | None = None  # its ref
    sample_id: str | None = None
    version: int | None = None
    prompt: dict | None = None  # Prompt.to_dict()
    sent_index: int = 0
    prompt_seed: int = 0
    rephrasings: list[dict] = field(default_factory=list)
    region: np.ndarray | None = None  # what generation edits; the object's mask by default
    example_hash: str | None = None
    example_source: str = ""
    candidate_ids: list[int] = field(default_factory=list)
    chosen: int | None = None
    edit_mask: np.ndarray | None = None
    mask_corrected: bool = False
    next_seed: int = 0
    skipped: list[int] = field(default_factory=list)
    outlines: bool = True  # draw the objects' outlines on the picture (off: the image as it is)


def require_user(ctx, username: str | None):
    return require_role(ctx.reads, username, ANNOTATE, "annotate")


def need_image(st: AnnotateState) -> None:
    if st.image_id is None:
        raise StateError("press Next to get an image first")


def need_pick(st: AnnotateState) -> None:
    need_image(st)
    if st.ann_id is None or st.picked_ref is None:
        raise StateError("pick the source object first: click it in the image")


def release_claims(ctx, st: AnnotateState, user: str) -> None:
    for ref_id in {st.ref_id, st.picked_ref} - {None}:
        ctx.queue.release(ref_id, user)
