"""What each unit of a build aims at and is given: the target, the prompt (and its rephrasings),
the region to edit, the text a model paints and the example object.

Targets: on RefShapes (a dataset folder with the generator's `edits.json`) the target of replace and
attribute is the ground truth's, so every pipeline aims at the same edit; elsewhere a seeded choice
per (ref, edit): another category name of the dataset for replace, a colour word the expression
does not already use for attribute. add and other take the configured target.

Regions: remove and attribute edit the object's mask; replace and other the mask grown by
`REPLACE_DILATION` of the square root of its area (at least `MIN_DILATION` pixels), so that a
substitute of another shape has room; add a box beside the object (`beside_region`).

A text-to-image model paints a description, not an instruction, so the text a pipeline that needs
one is sent describes the new content ("an orange hexagon"); the example object of a pipeline that
needs one is a crop of another object of the target's category, else of any other object, picked by
the seed. The sample's `prompt` is always the template prompt with exact spans.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

import numpy as np

from refcoco_edit.curation.config import TARGET_EDITS
from refcoco_edit.errors import DataError, InputError

if TYPE_CHECKING:
    from PIL.Image import Image

    from refcoco_edit.curation.config import BuildConfig
    from refcoco_edit.curation.ground_truth import GroundTruth
    from refcoco_edit.curation.plan import RefContext, Unit
    from refcoco_edit.refer.reader import RefCOCO
    from refcoco_edit.text.prompts import Prompt

# Colour words an attribute edit picks from: basic colour terms every text encoder knows.
ATTRIBUTE_COLOURS: tuple[str, ...] = (
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white",
)
# The region of a replace (and free-text) edit: the object's mask grown by this share of the square
# root of its area (at least MIN_DILATION pixels), so that a substitute of another shape has room.
REPLACE_DILATION = 0.1
MIN_DILATION = 3


def beside_region(mask: np.ndarray) -> np.ndarray:
    """For "add next to": the object's bounding box moved one box width to the side with more room,
    clipped to the image."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise InputError("the object's mask is empty")
    h, w = mask.shape
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    bw = x1 - x0
    nx0, nx1 = (x1, min(w, x1 + bw)) if w - x1 >= x0 else (max(0, x0 - bw), x0)
    out = np.zeros_like(mask, dtype=np.uint8)
    out[y0:y1, nx0:nx1] = 1
    if not out.any():
        raise InputError("no room beside the object to add anything")
    return out


class Targets:
    """The per-unit choices of one build (see the module docstring); prompts and rephrasings are
    kept on the ref's context, so the units of a ref share them."""

    def __init__(self, data: RefCOCO, cfg: BuildConfig, gt: GroundTruth | None, rephraser: Any = None) -> None:
        self.data = data
        self.cfg = cfg
        self.gt = gt
        self.rephraser = rephraser
        self.category_names = [str(c["name"]) for c in data.categories]
        self._anns_by_category: dict[str, list[int]] | None = None

    def target_for(self, ctx: RefContext, edit: str) -> str:
        if edit == "remove":
            return ""
        if edit in TARGET_EDITS:
            return self.cfg.target or ""
        if self.gt is not None:
            return str(self.gt.edit(ctx.ref_id, edit).get("target", ""))
        rng = random.Random(f"{self.cfg.seed}:{ctx.ref_id}:{edit}:target")
        if edit == "replace":
            others = sorted(n for n in set(self.category_names) if n != ctx.category)
            if not others:
                raise DataError(f"{self.data.dataset} has one category; a replace edit needs another")
            return rng.choice(others)
        used = {w.lower() for s in ctx.ref.get("sentences", []) for w in str(s.get("sent") or "").split()}
        colours = [c for c in ATTRIBUTE_COLOURS if c not in used] or list(ATTRIBUTE_COLOURS)
        return rng.choice(colours)

    def prompt_for(self, ctx: RefContext, edit: str) -> Prompt:
        if edit not in ctx.prompts:
            from refcoco_edit.text.prompts import prompt_for_ref

            ctx.prompts[edit] = prompt_for_ref(self.data, ctx.ref_id, edit, self.target_for(ctx, edit),
                                               seed=self.cfg.seed)
        return ctx.prompts[edit]

    def enrichment_for(self, ctx: RefContext, edit: str) -> tuple[list[dict], str | None]:
        """Rephrasings (unreviewed) of the unit's prompt, and the error when enrichment failed."""
        if edit not in ctx.enriched:
            from refcoco_edit.text.llm import enrich_batch

            prompt = self.prompt_for(ctx, edit)
            e = enrich_batch([prompt], self.cfg.enrich, self.rephraser, categories=[ctx.category],
                             extra_nouns=self.category_names)[0]
            rephrasings = []
            for p in e.rephrasings:
                d = p.to_dict()
                d["reviewed"] = False
                rephrasings.append(d)
            ctx.enriched[edit] = (rephrasings, e.error)
        return ctx.enriched[edit]

    def subject_noun(self, ctx: RefContext, sent_index: int) -> str:
        from refcoco_edit.text.subjects import subject_for_ref

        return subject_for_ref(self.data, ctx.ref_id, sent_index).noun or ctx.category

    def text_for(self, ctx: RefContext, edit: str) -> str:
        """What a text-to-image pipeline paints: a description of the new content, not the instruction."""
        from refcoco_edit.text.prompts import indefinite

        prompt = self.prompt_for(ctx, edit)
        if edit in ("replace", "add"):
            return indefinite(prompt.target)
        if edit == "attribute":
            noun = self.subject_noun(ctx, int(prompt.meta.get("sent_index", 0)))
            return indefinite(f"{prompt.target} {noun}")
        text = prompt.target.replace("{ref}", self.subject_noun(ctx, int(prompt.meta.get("sent_index", 0))))
        return " ".join(text.split())

    def region_for(self, ctx: RefContext, edit: str) -> tuple[np.ndarray, str]:
        """The mask a pipeline edits for this edit type, and a word on how it was made."""
        from refcoco_edit.pipelines.base import dilate

        mask = ctx.mask
        if edit in ("remove", "attribute"):
            return mask, "object"
        if edit == "add":
            return beside_region(mask), "beside"
        radius = max(MIN_DILATION, round(REPLACE_DILATION * math.sqrt(float(mask.sum()))))
        return dilate(mask, radius), f"object dilated {radius}px"

    def _anns_of(self, name: str) -> list[int]:
        if self._anns_by_category is None:
            names = {int(c["id"]): str(c["name"]) for c in self.data.categories}
            by: dict[str, list[int]] = {}
            for a in self.data.anns:
                by.setdefault(names.get(int(a["category_id"]), ""), []).append(int(a["id"]))
            self._anns_by_category = {k: sorted(v) for k, v in by.items()}
        return self._anns_by_category.get(name, [])

    def example_for(self, ctx: RefContext, unit: Unit) -> tuple[Image, str]:
        """An example of the substitute: a crop of another object that looks like the target, chosen
        by the seed: same category (on RefShapes same kind and colour first), else any other object."""
        from refcoco_edit.pipelines.composition import crop_object

        target = self.prompt_for(ctx, unit.edit_type).target
        pools: list[list[int]] = []
        if self.gt is not None:
            params = self.gt.edit(ctx.ref_id, unit.edit_type).get("params", {})
            kind = params.get("kind") or ctx.category
            colour = params.get("colour")
            same_kind = self._anns_of(kind)
            pools.append([a for a in same_kind if self.gt.objects.get(a, {}).get("colour") == colour])
            pools.append(same_kind)
        else:
            pools.append(self._anns_of(target))
        pools.append(sorted(int(a["id"]) for a in self.data.anns))
        rng = random.Random(f"{self.cfg.seed}:{unit.key}:example")
        for pool in pools:
            pool = [a for a in pool if a != unit.ann_id]
            if pool:
                ann_id = rng.choice(pool)
                break
        else:
            raise DataError(f"{self.data.dataset} has no other object to take an example from")
        ann = self.data.ann(ann_id)
        image = self.data.load_image(ann["image_id"])
        return crop_object(image, self.data.ann_mask(ann_id)), f"ann {ann_id} (image {ann['image_id']})"
