"""The units a build makes: one per (eligible ref, edit type, pipeline that makes that edit).

A unit's store key is `<dataset>/<split_by>/ref<id>/<edit>/<pipeline>` and its first candidate seed
comes from the build seed and the key, so a resumed or rerun unit is the same work with the same
noise. The units of one ref share a `RefContext` (the image and mask, loaded once, when needed).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

    from refcoco_edit.curation.selection import Candidate as Eligible
    from refcoco_edit.refer.reader import RefCOCO
    from refcoco_edit.text.prompts import Prompt

SELECTION_CHUNK = 64  # refs judged at once while looking for `limit` eligible ones


@dataclass
class Unit:
    ref_id: int
    ann_id: int
    image_id: int
    split: str
    edit_type: str
    pipeline: str
    key: str


def unit_key(dataset: str, split_by: str, ref_id: int, edit_type: str, pipeline: str) -> str:
    return f"{dataset}/{split_by}/ref{int(ref_id)}/{edit_type}/{pipeline}"


def unit_seed(build_seed: int, key: str) -> int:
    """The first candidate seed of a unit: from the build seed and the key, so a resumed or rerun
    unit gets the same noise, and units differ from one another."""
    return int.from_bytes(hashlib.sha256(f"{build_seed}:{key}".encode()).digest()[:4], "big")


def select_refs(data: RefCOCO, split: str | None = None, limit: int | None = None, *, use_images: bool = True,
                progress: bool = False) -> tuple[list[Eligible], int, Counter]:
    """Eligible refs (selection.Candidate) in file order, the first `limit` of them; also how many
    refs were judged and why the others were not eligible. With a limit, refs are judged in chunks
    and judging stops once enough are found (a full RefCOCO need not be read for a small build)."""
    from refcoco_edit.curation.selection import select_candidates

    ids = data.ref_ids(split=split)
    chunk = len(ids) if limit is None else max(SELECTION_CHUNK, 2 * limit)
    eligible: list = []
    judged = 0
    why: Counter = Counter()
    for start in range(0, len(ids), max(chunk, 1)):
        batch = select_candidates(data, ids[start:start + chunk], use_images=use_images,
                                  progress=progress and limit is None)
        judged += len(batch)
        for c in batch:
            if c.eligible:
                eligible.append(c)
            elif not c.not_sole_subject:
                why["sole prominent subject"] += 1
            else:
                why["no similar object"] += 1
        if limit is not None and len(eligible) >= limit:
            break
    return (eligible if limit is None else eligible[:limit]), judged, why


def plan_units(data: RefCOCO, selected: Sequence[Eligible], edits: Sequence[str], pipelines: Sequence[str],
               makes: Callable[[str], Sequence[str]]) -> list[Unit]:
    """Per selected ref, per edit type, per pipeline whose `makes(pipeline)` edit types include it."""
    units = []
    for c in selected:
        split = str(data.ref(c.ref_id)["split"])
        for edit in edits:
            for pipe in pipelines:
                if edit in makes(pipe):
                    key = unit_key(data.dataset, data.split_by, c.ref_id, edit, pipe)
                    units.append(Unit(c.ref_id, c.ann_id, c.image_id, split, edit, pipe, key))
    return units


class RefContext:
    """What the units of one ref share, loaded once and only when a unit needs it."""

    def __init__(self, data: RefCOCO, ref_id: int) -> None:
        self.data = data
        self.ref_id = ref_id
        self.ref = data.ref(ref_id)
        self.ann = data.ref_ann(ref_id)
        self._image: Image | None = None
        self._mask: np.ndarray | None = None
        self._error: Exception | None = None
        self.prompts: dict[str, Prompt] = {}
        self.enriched: dict[str, tuple[list[dict], str | None]] = {}

    @property
    def category(self) -> str:
        """Looked up when a unit needs it, so a ref with a missing category fails as that unit's error."""
        return str(self.data.category(self.ann["category_id"])["name"])

    def _load(self) -> None:
        if self._error is not None:
            raise self._error
        if self._image is None:
            try:
                self._image = self.data.load_image(self.ref["image_id"])
                self._mask = self.data.mask(self.ref_id)
            except Exception as exc:  # kept so every unit of the ref reports it without re-reading
                self._error = exc
                raise

    @property
    def image(self) -> Image:
        self._load()
        assert self._image is not None
        return self._image

    @property
    def mask(self) -> np.ndarray:
        self._load()
        assert self._mask is not None
        return self._mask

