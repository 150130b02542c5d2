"""Auto-accept policies: which candidate becomes a unit's sample, and whether it is accepted unseen.

`none` accepts nothing; `oracle` (RefShapes only) accepts an exact ground-truth sample, and a
pipeline's sample whose closest candidate to the ground-truth edited image (mean absolute difference
over the ground-truth edit region, 0..255 per channel, of the candidate as it would be stored: the
source outside its M_e) is within `ORACLE_MAX_MAD` and within
`ORACLE_MAX_RATIO` of the source's own difference; that candidate becomes the sample's edit.
`score>=X` accepts when the best candidate's CLIP score (100 x cosine) is at least X. Without a
policy's choice the sample's candidate is the highest CLIP score when ranked, else the first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from refcoco_edit.errors import DataError, InputError

if TYPE_CHECKING:
    from PIL.Image import Image

    from refcoco_edit.curation.ground_truth import GroundTruth
    from refcoco_edit.pipelines.base import Candidate

# The oracle's acceptance bounds, measured on the RefShapes sample: a correct edit differs from the
# ground truth inside its region only by texture the pipeline could not know (OpenCV removals:
# 2.6 to 8.3 of 255 over the 98 refs), while leaving the object as it was differs by 30 (two close
# colours) to 120, and by as little as 6.4 for a replace that keeps the colour and changes the
# shape. Hence two tests: at most 10 absolute, and at most a quarter of the source's own
# difference, so that a candidate that did next to nothing is never accepted.
ORACLE_MAX_MAD = 10.0
ORACLE_MAX_RATIO = 0.25


@dataclass(frozen=True)
class AcceptPolicy:
    """`none`, `oracle` or `score>=X` (see the module docstring)."""

    kind: str = "none"
    threshold: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> AcceptPolicy:
        t = "".join((text or "none").split()).lower()
        if t in ("none", "oracle"):
            return cls(t)
        if t.startswith("score>="):
            try:
                value = float(t[len("score>="):])
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                return cls("score", value)
        raise InputError(f"unknown --auto-accept policy {text!r}; use none, oracle or score>=X (e.g. score>=25)")

    @property
    def name(self) -> str:
        return f"score>={self.threshold:g}" if self.kind == "score" else self.kind

    @property
    def reviewer(self) -> str:
        return f"auto:{self.name}"


@dataclass
class Decision:
    """An auto-accept policy's verdict on one sample."""

    policy: str
    accepted: bool
    reason: str
    measures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def decide(policy: AcceptPolicy, candidates: Sequence[Candidate], *, pipeline: str, exact: bool,
           gt: GroundTruth | None, ref_id: int, edit_type: str, source: Image) -> tuple[int, Decision | None]:
    """The index of the sample's candidate, and the policy's decision (None for policy none).
    `exact`: the candidates are the ground truth itself (a pipeline that `needs_ground_truth`)."""
    import numpy as np

    scores = [c.score for c in candidates]
    ranked = any(s is not None for s in scores)
    best = int(np.argmax([-math.inf if s is None else s for s in scores])) if ranked else 0
    if policy.kind == "none":
        return best, None
    name = policy.name
    if policy.kind == "score":
        if not ranked:
            return best, Decision(name, False, f"no CLIP score: pipeline {pipeline} does not rank")
        score = float(scores[best])
        ok = score >= float(policy.threshold)
        return best, Decision(name, ok, f"CLIP score {score:.2f} {'>=' if ok else '<'} {policy.threshold:g}",
                              {"score": score})
    return oracle(name, candidates, best, exact=exact, gt=gt, ref_id=ref_id, edit_type=edit_type, source=source)


def oracle(name: str, candidates: Sequence[Candidate], best: int, *, exact: bool, gt: GroundTruth | None,
           ref_id: int, edit_type: str, source: Image) -> tuple[int, Decision]:
    """The oracle policy (see the module docstring); `best` is kept when there is nothing to measure."""
    import numpy as np

    from refcoco_edit.imaging.masks import keep_background

    if exact:
        return 0, Decision(name, True, "exact ground truth of the RefShapes generator")
    assert gt is not None
    if (ref_id, edit_type) not in gt.edits:
        return best, Decision(name, False, f"no ground truth for a {edit_type} edit")
    rec = gt.edit(ref_id, edit_type)
    try:
        truth = np.asarray(gt.edited_image(rec), dtype=np.int16)
    except DataError as exc:
        return best, Decision(name, False, f"ground truth unreadable: {exc}")
    src = np.asarray(source, dtype=np.int16)
    region = gt.edit_mask(rec, src.shape[0], src.shape[1]).astype(bool)
    if truth.shape != src.shape or not region.any():
        return best, Decision(name, False, "ground truth does not fit the source")
    # judged as it would be stored: the source outside the candidate's M_e (the background invariant)
    mads = [float(np.abs(np.asarray(keep_background(source, c.image, c.edit_mask), dtype=np.int16)
                         - truth)[region].mean()) for c in candidates]
    source_mad = float(np.abs(src - truth)[region].mean())
    best = int(np.argmin(mads))
    mad = mads[best]
    ok = mad <= ORACLE_MAX_MAD and mad <= ORACLE_MAX_RATIO * source_mad
    reason = (f"mean absolute difference to the ground truth {mad:.2f} "
              f"({'within' if ok else 'outside'} {ORACLE_MAX_MAD:g} and {ORACLE_MAX_RATIO:g} x the "
              f"source's {source_mad:.2f})")
    return best, Decision(name, ok, reason, {"mad": [round(m, 4) for m in mads], "source_mad": round(source_mad, 4),
                                            "max_mad": ORACLE_MAX_MAD, "max_ratio": ORACLE_MAX_RATIO})
