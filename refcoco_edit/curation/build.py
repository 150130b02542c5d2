"""`refcoco-edit build`: turn RefCOCO refs into `candidate` samples in an annotation store.

One unit of work is one (ref, edit type, pipeline). For each eligible ref (`selection`), each edit
type asked for and each chosen pipeline that can make that edit, the build composes the prompt
(`prompts.prompt_for_ref`), runs the pipeline for K seeded candidates and stores ONE sample with
status `candidate` holding all of them; the sample's edited image and edit mask are the best
candidate's (the oracle's choice, else the highest CLIP score when ranked, else the first).

Which pipeline makes which edit (`PIPELINE_EDITS`):

| pipeline | edits | region it gets |
|---|---|---|
| composition (Paint-by-Example) | replace | the object's mask, dilated |
| region_edit (Blended Latent Diffusion) | replace, attribute, add, other | dilated mask; the mask; a box beside the object; dilated mask |
| inpaint, classical_inpaint | remove | the object's mask (the pipelines dilate it themselves) |
| synthetic | replace, remove, attribute | none: the RefShapes generator's exact edit from `edits.json` |

Default pipelines: `region_edit` (replace, attribute) and `classical_inpaint` (remove): a model for
the edits that need one, and the weight-free removal, which is as good as diffusion on flat
backgrounds and costs nothing. `--pipelines synthetic,classical_inpaint` builds the RefShapes
sample without any weight.

Targets: on RefShapes (a dataset folder with the generator's `edits.json`) the target of replace and
attribute is the ground truth's, so every pipeline aims at the same edit; elsewhere a seeded choice
per (ref, edit): another category name of the dataset for replace, a colour word the expression
does not already use for attribute. add and other take `--target` (the object to add, the free text).

What each pipeline is sent (`generation["prompt_sent"]`): region_edit a description of the new
content ("an orange hexagon", "a purple star"), because a text-to-image model paints a description,
not an instruction; inpaint its background prompt; composition an example image (a crop of another
object of the target's category, else of any other object, picked by the seed). The sample's
`prompt` is always the template prompt with exact spans. `--enrich N` adds N rephrasings
(LLM if configured, else the offline rule-based rephraser) to `generation["enriched"]`, each marked
`reviewed: false`; they are suggestions for the annotators, never the sample's prompt.

Auto-accept policies (`--auto-accept`): `none`; `oracle` (RefShapes only): `synthetic` samples are
exact and accepted; a model pipeline's sample is accepted when its closest candidate to the
ground-truth edited image (mean absolute difference over the ground-truth edit region, 0..255 per
channel) is within `ORACLE_MAX_MAD` and within `ORACLE_MAX_RATIO` of the source's own difference
(see those constants); that candidate becomes the sample's edit. `score>=X`: accepted when the best
candidate's CLIP score (100 x cosine, `--rank-clip`) is at least X. An accepted sample keeps
annotator "build", gets reviewer `auto:<policy>` through a stored review, so the audit log records
who accepted it and why; the decision is also kept in `generation["auto_accept"]`.

Resuming: a unit's store key is `<dataset>/<split_by>/ref<id>/<edit>/<pipeline>`. A stored key is
skipped; a unit killed between its steps (sample stored, candidates not yet; or candidates stored,
acceptance not yet) is finished from where it stopped, and since seeds are derived from the build
seed and the key, a regenerated candidate has the same pixels. Failed units are recorded
(`Store.record_failure`) and skipped on later runs unless `retry_failed`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from refcoco_edit.errors import DataError, InputError, RefcocoEditError
from refcoco_edit.pipelines import PIPELINES as MODEL_PIPELINES

log = logging.getLogger(__name__)

BUILD_USER = "build"
SYNTHETIC = "synthetic"
EDITS_FILE = "edits.json"
ALL_PIPELINES: tuple[str, ...] = (*MODEL_PIPELINES, SYNTHETIC)
DEFAULT_PIPELINES: tuple[str, ...] = ("region_edit", "classical_inpaint")
DEFAULT_EDITS: tuple[str, ...] = ("replace", "remove", "attribute")
PIPELINE_EDITS: dict[str, tuple[str, ...]] = {
    "composition": ("replace",),
    "region_edit": ("replace", "attribute", "add", "other"),
    "inpaint": ("remove",),
    "classical_inpaint": ("remove",),
    SYNTHETIC: ("replace", "remove", "attribute"),
}
NO_MODEL_PIPELINES = ("classical_inpaint", SYNTHETIC)
# Colour words an attribute edit picks from: basic colour terms every text encoder knows.
ATTRIBUTE_COLOURS: tuple[str, ...] = (
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white",
)
# The oracle's acceptance bounds, measured on the RefShapes sample: a correct edit differs from the
# ground truth inside its region only by texture the pipeline could not know (OpenCV removals:
# 2.6 to 8.3 of 255 over the 98 refs), while leaving the object as it was differs by 30 (two close
# colours) to 120, and by as little as 6.4 for a replace that keeps the colour and changes the
# shape. Hence two tests: at most 10 absolute, and at most a quarter of the source's own
# difference, so that a candidate that did next to nothing is never accepted.
ORACLE_MAX_MAD = 10.0
ORACLE_MAX_RATIO = 0.25
# The region of a replace (and free-text) edit: the object's mask grown by this share of the square
# root of its area (at least MIN_DILATION pixels), so that a substitute of another shape has room.
REPLACE_DILATION = 0.1
MIN_DILATION = 3
SELECTION_CHUNK = 64  # refs judged at once while looking for `limit` eligible ones


# ------------------------------------------------------------------------------ configuration


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


@dataclass(frozen=True)
class BuildConfig:
    """What to build; `check()` normalises and validates it."""

    split: str | None = None
    limit: int | None = None  # eligible refs to build
    pipelines: tuple[str, ...] = DEFAULT_PIPELINES
    edits: tuple[str, ...] = DEFAULT_EDITS
    candidates: int = 1  # K per sample
    enrich: int = 0  # rephrasings per prompt
    auto_accept: str = "none"
    seed: int = 0
    steps: int | None = None
    size: int | None = None
    rank_clip: str | None = None  # CLIP model name that ranks region_edit / inpaint candidates
    target: str | None = None  # add / other
    pipeline_models: Mapping[str, str] = field(default_factory=dict)  # pipeline -> resolver name
    model_overrides: Mapping[str, str] = field(default_factory=dict)  # resolver name -> path / Hub id
    device: str | None = None
    dtype: str | None = None
    retry_failed: bool = False
    use_images: bool = True  # selection measures appearance on the images

    @property
    def policy(self) -> AcceptPolicy:
        return AcceptPolicy.parse(self.auto_accept)

    def check(self) -> BuildConfig:
        from refcoco_edit.text.prompts import normalise_edit_type

        pipelines = tuple(dict.fromkeys(p.strip() for p in self.pipelines if p.strip()))
        unknown = [p for p in pipelines if p not in ALL_PIPELINES]
        if unknown or not pipelines:
            raise InputError(f"unknown pipeline(s) {', '.join(unknown) or '(none given)'}; "
                             f"use: {', '.join(ALL_PIPELINES)}")
        edits = tuple(dict.fromkeys(normalise_edit_type(e) for e in self.edits if e.strip()))
        if not edits:
            raise InputError("no edit type given (--edits replace,remove,attribute)")
        if not any(e in PIPELINE_EDITS[p] for p in pipelines for e in edits):
            raise InputError(f"none of the pipelines {', '.join(pipelines)} makes {', '.join(edits)} edits; "
                             + "; ".join(f"{p}: {', '.join(PIPELINE_EDITS[p])}" for p in pipelines))
        for name, value, low in (("--candidates", self.candidates, 1), ("--enrich", self.enrich, 0),
                                 ("--limit", self.limit, 1), ("--steps", self.steps, 1), ("--size", self.size, 8),
                                 ("--seed", self.seed, 0)):
            if value is not None and int(value) < low:
                raise InputError(f"{name} must be at least {low}, got {value}")
        needs_target = [e for e in edits if e in ("add", "other")]
        if needs_target and not (self.target and self.target.strip()):
            raise InputError(f"{', '.join(needs_target)} edits need --target (the object to add / the free text)")
        for pipe in self.pipeline_models:
            if pipe not in ALL_PIPELINES:
                raise InputError(f"--pipeline-model names unknown pipeline {pipe!r}")
            if pipe in NO_MODEL_PIPELINES:
                raise InputError(f"pipeline {pipe} uses no model; drop --pipeline-model {pipe}=...")
        policy = self.policy
        if policy.kind == "score" and not self.rank_clip:
            raise InputError("--auto-accept score>=X needs ranked candidates: give --rank-clip NAME "
                             "(a CLIP model, e.g. clip-vit-l14)")
        return replace(self, pipelines=pipelines, edits=edits, auto_accept=policy.name,
                       target=" ".join(self.target.split()) if self.target else None)


def parse_pipeline_models(items: Iterable[str] | None) -> dict[str, str]:
    """`["region_edit=tiny-sd15"]` -> {"region_edit": "tiny-sd15"} (the last one wins)."""
    out: dict[str, str] = {}
    for item in items or ():
        pipe, sep, name = (s.strip() for s in item.partition("="))
        if not sep or not pipe or not name:
            raise InputError(f"--pipeline-model expects PIPELINE=MODEL_NAME, got {item!r}")
        out[pipe] = name
    return out


def split_list(text: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())


def unit_key(dataset: str, split_by: str, ref_id: int, edit_type: str, pipeline: str) -> str:
    return f"{dataset}/{split_by}/ref{int(ref_id)}/{edit_type}/{pipeline}"


def unit_seed(build_seed: int, key: str) -> int:
    """The first candidate seed of a unit: from the build seed and the key, so a resumed or rerun
    unit gets the same noise, and units differ from one another."""
    return int.from_bytes(hashlib.sha256(f"{build_seed}:{key}".encode()).digest()[:4], "big")


# ------------------------------------------------------------------------------ RefShapes ground truth


@dataclass
class GroundTruth:
    """The RefShapes generator's exact edits (`<dataset>/edits.json`), by (ref id, edit type)."""

    folder: Path
    edits: dict[tuple[int, str], dict]
    objects: dict[int, dict]  # ann id -> {"kind", "colour", ...}
    seed: int

    @classmethod
    def find(cls, data) -> GroundTruth | None:
        """The ground truth beside the dataset's refs, or None when the folder has no edits.json."""
        from refcoco_edit.refer.reader import load_json

        path = Path(data.source) / EDITS_FILE
        if not path.is_file():
            return None
        raw = load_json(path, "RefShapes edits file")
        if not isinstance(raw, dict) or not isinstance(raw.get("edits"), list):
            raise DataError(f"{path}: not a RefShapes edits file (no 'edits' list)")
        edits: dict[tuple[int, str], dict] = {}
        for rec in raw["edits"]:
            try:
                edits[(int(rec["ref_id"]), str(rec["edit_type"]))] = rec
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}: an edit lacks ref_id or edit_type") from None
        objects = {int(k): v for k, v in (raw.get("objects") or {}).items() if isinstance(v, dict)}
        return cls(path.parent, edits, objects, int(raw.get("seed", 0) or 0))

    def edit(self, ref_id: int, edit_type: str) -> dict:
        rec = self.edits.get((int(ref_id), edit_type))
        if rec is None:
            raise DataError(f"{self.folder / EDITS_FILE} has no {edit_type} edit of ref {ref_id}")
        return rec

    def edited_image(self, rec: dict):
        from refcoco_edit.imaging.files import open_image
        from refcoco_edit.refer.reader import member_path

        name = rec.get("edited_file")
        if not name:
            raise DataError(f"edit {rec.get('edit_id')} of ref {rec.get('ref_id')} has no edited image "
                            "(the dataset was generated without images)")
        return open_image(member_path(self.folder, name, f"{self.folder / EDITS_FILE}: edit {rec.get('edit_id')}"))

    def edit_mask(self, rec: dict, height: int, width: int) -> np.ndarray:
        from refcoco_edit.refer.reader import decode_segmentation

        return decode_segmentation(rec.get("edit_mask"), height, width, f"ground-truth edit {rec.get('edit_id')}")


class SyntheticPipeline:
    """The `synthetic` pipeline: the generator's exact edit as the one candidate."""

    name = SYNTHETIC
    model = "refshapes"

    def __init__(self, gt: GroundTruth) -> None:
        self.gt = gt

    def generate(self, image: Any, mask: Any, *, ref_id: int, edit_type: str, **_: Any) -> list:
        from refcoco_edit.pipelines.base import Candidate

        rec = self.gt.edit(ref_id, edit_type)
        edited = self.gt.edited_image(rec)
        if edited.size != image.size:
            raise DataError(f"ground-truth edit {rec.get('edit_id')} is {edited.size}, the source {image.size}")
        em = self.gt.edit_mask(rec, image.height, image.width)
        params = {"pipeline": SYNTHETIC, "method": "refshapes_ground_truth", "model": self.model,
                  "edit_id": rec.get("edit_id"), "edited_file": rec.get("edited_file"),
                  "edit_params": rec.get("params", {}), "generator_seed": self.gt.seed}
        return [Candidate(image=edited, seed=self.gt.seed, params=params, model=self.model, edit_mask=em)]


# ------------------------------------------------------------------------------ results


@dataclass
class Decision:
    """An auto-accept policy's verdict on one sample."""

    policy: str
    accepted: bool
    reason: str
    measures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BuildSummary:
    """What a build did. `built`: samples stored this run; `resumed`: units a killed run left half
    done and this one finished; `skipped_done` / `skipped_failed`: units already in the store."""

    dataset: str
    split_by: str
    refs: int = 0  # refs judged by the selection rules
    eligible: int = 0
    selected: int = 0  # eligible refs built (after --limit)
    units: int = 0
    built: int = 0
    resumed: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    failed: int = 0
    accepted: int = 0
    ineligible: dict[str, int] = field(default_factory=dict)
    by_pipeline: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    policy: str = "none"
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Unit:
    ref_id: int
    ann_id: int
    image_id: int
    split: str
    edit_type: str
    pipeline: str
    key: str


@dataclass
class _State:
    """Where a unit stands in the store: new, done, failed, or half done (no candidates yet, or
    acceptance pending)."""

    kind: str  # new | done | failed | no_candidates | review_pending
    sample_id: str | None = None


class _RefContext:
    """What the units of one ref share, loaded once and only when a unit needs it."""

    def __init__(self, data, ref_id: int) -> None:
        self.data = data
        self.ref_id = ref_id
        self.ref = data.ref(ref_id)
        self.ann = data.ref_ann(ref_id)
        self._image: Any = None
        self._mask: np.ndarray | None = None
        self._error: Exception | None = None
        self.prompts: dict[str, Any] = {}
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
    def image(self):
        self._load()
        return self._image

    @property
    def mask(self) -> np.ndarray:
        self._load()
        assert self._mask is not None
        return self._mask


# ------------------------------------------------------------------------------ selection


def select_refs(data, split: str | None = None, limit: int | None = None, *, use_images: bool = True,
                progress: bool = False) -> tuple[list, int, Counter]:
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


# ------------------------------------------------------------------------------ the builder


PipelineFactory = Callable[[str], Any]


class Builder:
    """Runs a build into a store; see `build`."""

    def __init__(self, data, store, config: BuildConfig, *, pipeline_factory: PipelineFactory | None = None,
                 rephraser: Any = None, progress: bool = False, user: str = BUILD_USER) -> None:
        self.data = data
        self.store = store
        self.cfg = config.check()
        self.policy = self.cfg.policy
        self.progress = progress
        self.user = user
        self.gt = GroundTruth.find(data)
        needs_gt = [p for p in self.cfg.pipelines if p == SYNTHETIC] + (["--auto-accept oracle"]
                                                                       if self.policy.kind == "oracle" else [])
        if needs_gt and self.gt is None:
            raise InputError(f"{' and '.join(needs_gt)} need(s) the RefShapes generator's ground truth "
                             f"({Path(data.source) / EDITS_FILE}); this dataset has none")
        self._factory = pipeline_factory or self._load_pipeline
        self._pipelines: dict[str, Any] = {}
        self._rephraser = rephraser
        if self.cfg.enrich and rephraser is None:
            from refcoco_edit.text.llm import make_rephraser

            self._rephraser = make_rephraser(None, seed=self.cfg.seed)
        self._category_names = [str(c["name"]) for c in data.categories]
        self._anns_by_category: dict[str, list[int]] | None = None

    # ---------------------------------------------------------------- pipelines
    def _load_pipeline(self, name: str):
        if name == SYNTHETIC:
            assert self.gt is not None
            return SyntheticPipeline(self.gt)
        from refcoco_edit.pipelines import get_pipeline

        return get_pipeline(name, self.cfg.pipeline_models.get(name), dict(self.cfg.model_overrides),
                            self.cfg.device, self.cfg.dtype, progress=False)

    def pipeline(self, name: str):
        if name not in self._pipelines:
            self._pipelines[name] = self._factory(name)
        return self._pipelines[name]

    # ---------------------------------------------------------------- planning
    def plan(self, selected: Sequence) -> list[Unit]:
        units = []
        for c in selected:
            split = str(self.data.ref(c.ref_id)["split"])
            for edit in self.cfg.edits:
                for pipe in self.cfg.pipelines:
                    if edit in PIPELINE_EDITS[pipe]:
                        key = unit_key(self.data.dataset, self.data.split_by, c.ref_id, edit, pipe)
                        units.append(Unit(c.ref_id, c.ann_id, c.image_id, split, edit, pipe, key))
        return units

    def state(self, key: str) -> _State:
        from refcoco_edit.store import NotFoundError, key_sample_id

        if not self.store.has_key(key):
            return _State("new")
        if not self.store.has_key(key, include_failed=False):
            return _State("failed", key_sample_id(key))
        sid = key_sample_id(key)
        try:
            rec = self.store.get_sample(sid, images=False)
        except NotFoundError:  # stored under another id (imported): its own business
            return _State("done")
        if not self.store.get_candidates(sid, images=False):
            return _State("no_candidates", sid)
        decision = (rec.sample.generation or {}).get("auto_accept") or {}
        if decision.get("accepted") and rec.sample.status == "candidate" and not rec.sample.reviewer:
            return _State("review_pending", sid)
        return _State("done", sid)

    # ---------------------------------------------------------------- prompts and targets
    def target_for(self, ctx: _RefContext, edit: str) -> str:
        if edit == "remove":
            return ""
        if edit in ("add", "other"):
            return self.cfg.target or ""
        if self.gt is not None:
            return str(self.gt.edit(ctx.ref_id, edit).get("target", ""))
        rng = random.Random(f"{self.cfg.seed}:{ctx.ref_id}:{edit}:target")
        if edit == "replace":
            others = sorted(n for n in set(self._category_names) if n != ctx.category)
            if not others:
                raise DataError(f"{self.data.dataset} has one category; a replace edit needs another")
            return rng.choice(others)
        used = {w.lower() for s in ctx.ref.get("sentences", []) for w in str(s.get("sent") or "").split()}
        colours = [c for c in ATTRIBUTE_COLOURS if c not in used] or list(ATTRIBUTE_COLOURS)
        return rng.choice(colours)

    def prompt_for(self, ctx: _RefContext, edit: str):
        if edit not in ctx.prompts:
            from refcoco_edit.text.prompts import prompt_for_ref

            ctx.prompts[edit] = prompt_for_ref(self.data, ctx.ref_id, edit, self.target_for(ctx, edit),
                                               seed=self.cfg.seed)
        return ctx.prompts[edit]

    def enrichment_for(self, ctx: _RefContext, edit: str) -> tuple[list[dict], str | None]:
        """Rephrasings (unreviewed) of the unit's prompt, and the error when enrichment failed."""
        if edit not in ctx.enriched:
            from refcoco_edit.text.llm import enrich_batch

            prompt = self.prompt_for(ctx, edit)
            e = enrich_batch([prompt], self.cfg.enrich, self._rephraser, categories=[ctx.category],
                             extra_nouns=self._category_names)[0]
            rephrasings = []
            for p in e.rephrasings:
                d = p.to_dict()
                d["reviewed"] = False
                rephrasings.append(d)
            ctx.enriched[edit] = (rephrasings, e.error)
        return ctx.enriched[edit]

    def subject_noun(self, ctx: _RefContext, sent_index: int) -> str:
        from refcoco_edit.text.subjects import subject_for_ref

        return subject_for_ref(self.data, ctx.ref_id, sent_index).noun or ctx.category

    def text_for(self, ctx: _RefContext, edit: str) -> str:
        """What region_edit paints: a description of the new content, not the instruction."""
        from refcoco_edit.text.prompts import indefinite

        prompt = self.prompt_for(ctx, edit)
        if edit in ("replace", "add"):
            return indefinite(prompt.target)
        if edit == "attribute":
            noun = self.subject_noun(ctx, int(prompt.meta.get("sent_index", 0)))
            return indefinite(f"{prompt.target} {noun}")
        text = prompt.target.replace("{ref}", self.subject_noun(ctx, int(prompt.meta.get("sent_index", 0))))
        return " ".join(text.split())

    # ---------------------------------------------------------------- regions and examples
    def region_for(self, ctx: _RefContext, edit: str) -> tuple[np.ndarray, str]:
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

    def example_for(self, ctx: _RefContext, unit: Unit):
        """Paint-by-Example's example: a crop of another object that looks like the target, chosen by
        the seed: same category (on RefShapes same kind and colour first), else any other object."""
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

    # ---------------------------------------------------------------- one unit
    def generate(self, unit: Unit, ctx: _RefContext) -> tuple[list, dict]:
        """The unit's candidates (as the pipeline returns them) and what to record about the request."""
        if unit.pipeline == SYNTHETIC:
            region, how = ctx.mask, "ground truth"
        else:
            region, how = self.region_for(ctx, unit.edit_type)
        info: dict[str, Any] = {"region": how, "prompt_sent": None}
        pipe = self.pipeline(unit.pipeline)
        seed = unit_seed(self.cfg.seed, unit.key)
        opts: dict[str, Any] = {"num": self.cfg.candidates, "seed": seed}
        if unit.pipeline == SYNTHETIC:
            opts = {"ref_id": unit.ref_id, "edit_type": unit.edit_type}
        elif unit.pipeline != "classical_inpaint":
            if self.cfg.steps is not None:
                opts["steps"] = self.cfg.steps
            if self.cfg.size is not None:
                opts["size"] = self.cfg.size
            if unit.pipeline == "composition":
                example, source = self.example_for(ctx, unit)
                opts.update(example=example, example_source=source)
                info["example"] = source
            else:
                if self.cfg.rank_clip:
                    opts["rank_by"] = self.cfg.rank_clip
                if unit.pipeline == "region_edit":
                    opts["text"] = info["prompt_sent"] = self.text_for(ctx, unit.edit_type)
                else:  # inpaint: its default background prompt
                    from refcoco_edit.pipelines.inpaint import BACKGROUND_PROMPT

                    info["prompt_sent"] = BACKGROUND_PROMPT
        candidates = pipe.generate(ctx.image, region, **opts)
        if not candidates:
            raise RefcocoEditError(f"pipeline {unit.pipeline} returned no candidate")
        return candidates, info

    def decide(self, unit: Unit, ctx: _RefContext, candidates: list) -> tuple[int, Decision | None]:
        """The index of the sample's candidate, and the policy's decision (None for policy none)."""
        scores = [c.score for c in candidates]
        ranked = any(s is not None for s in scores)
        best = int(np.argmax([-math.inf if s is None else s for s in scores])) if ranked else 0
        kind = self.policy.kind
        if kind == "none":
            return best, None
        name = self.policy.name
        if kind == "score":
            if not ranked:
                return best, Decision(name, False, f"no CLIP score: pipeline {unit.pipeline} does not rank")
            score = float(scores[best])
            ok = score >= float(self.policy.threshold)
            return best, Decision(name, ok, f"CLIP score {score:.2f} {'>=' if ok else '<'} {self.policy.threshold:g}",
                                  {"score": score})
        # oracle
        if unit.pipeline == SYNTHETIC:
            return 0, Decision(name, True, "exact ground truth of the RefShapes generator")
        assert self.gt is not None
        if (ctx.ref_id, unit.edit_type) not in self.gt.edits:
            return best, Decision(name, False, f"no ground truth for a {unit.edit_type} edit")
        rec = self.gt.edit(ctx.ref_id, unit.edit_type)
        try:
            truth = np.asarray(self.gt.edited_image(rec), dtype=np.int16)
        except DataError as exc:
            return best, Decision(name, False, f"ground truth unreadable: {exc}")
        src = np.asarray(ctx.image, dtype=np.int16)
        region = self.gt.edit_mask(rec, src.shape[0], src.shape[1]).astype(bool)
        if truth.shape != src.shape or not region.any():
            return best, Decision(name, False, "ground truth does not fit the source")
        mads = [float(np.abs(np.asarray(c.image, dtype=np.int16) - truth)[region].mean()) for c in candidates]
        source_mad = float(np.abs(src - truth)[region].mean())
        best = int(np.argmin(mads))
        mad = mads[best]
        ok = mad <= ORACLE_MAX_MAD and mad <= ORACLE_MAX_RATIO * source_mad
        reason = (f"mean absolute difference to the ground truth {mad:.2f} "
                  f"({'within' if ok else 'outside'} {ORACLE_MAX_MAD:g} and {ORACLE_MAX_RATIO:g} x the "
                  f"source's {source_mad:.2f})")
        return best, Decision(name, ok, reason, {"mad": [round(m, 4) for m in mads], "source_mad": round(source_mad, 4),
                                                "max_mad": ORACLE_MAX_MAD, "max_ratio": ORACLE_MAX_RATIO})

    def generation(self, unit: Unit, candidates: list, best: int, info: dict, decision: Decision | None,
                   ctx: _RefContext) -> dict:
        chosen = candidates[best]
        gen = {k: v for k, v in chosen.params.items() if k != "batch_index"}
        gen.update(pipeline=unit.pipeline, model=chosen.model, seed=chosen.seed,
                   seeds=[c.seed for c in candidates], num_candidates=len(candidates), chosen_index=best, **info)
        gen["build"] = {"key": unit.key, "seed": self.cfg.seed}
        if self.cfg.enrich:
            rephrasings, error = self.enrichment_for(ctx, unit.edit_type)
            gen["enriched"] = rephrasings
            if error:
                gen["enrich_error"] = error
        if decision is not None:
            gen["auto_accept"] = decision.to_dict()
        return gen

    def make_sample(self, unit: Unit, ctx: _RefContext, chosen, generation: dict):
        from refcoco_edit.schema import Sample

        p = self.prompt_for(ctx, unit.edit_type)
        return Sample(
            sample_id="", image_id=unit.image_id, ref_id=unit.ref_id, ann_id=unit.ann_id, split=unit.split,
            source_image=ctx.image, edited_image=chosen.image, source_mask=ctx.mask,
            edit_mask=np.asarray(chosen.edit_mask, dtype=np.uint8), prompt=p.prompt,
            referring_text=p.referring_text, edit_text=p.edit_text, referring_spans=p.referring_spans,
            edit_spans=p.edit_spans, edit_type=unit.edit_type, target=p.target, pipeline=unit.pipeline,
            generation=generation, annotator=self.user, reviewer="", status="candidate",
        )

    def _store_candidates(self, sample_id: str, candidates: list, best: int) -> None:
        from refcoco_edit.store import Candidate

        self.store.add_candidates(sample_id, [
            Candidate(image=c.image, edit_mask=c.edit_mask, seed=c.seed, params=c.params, model=c.model,
                      score=c.score, chosen=i == best) for i, c in enumerate(candidates)], user=self.user)

    def _accept(self, sample_id: str) -> bool:
        """Accept as the policy recorded in the sample's generation dict; False when a person changed
        the sample in the meantime (their work wins)."""
        from refcoco_edit.store import ConflictError

        rec = self.store.get_sample(sample_id, images=False)
        decision = rec.sample.generation.get("auto_accept") or {}
        policy = decision.get("policy") or self.policy.name
        try:
            self.store.add_review(sample_id, f"auto:{policy}", "accept", rec.version,
                                  comment=f"auto-accepted by policy {policy}: {decision.get('reason', '')}")
        except ConflictError as exc:
            log.warning("%s not auto-accepted: %s", sample_id, exc)
            return False
        return True

    def run_unit(self, unit: Unit, ctx: _RefContext, state: _State) -> tuple[str, bool]:
        """Build (or finish) one unit; ("built" | "resumed", accepted)."""
        if state.kind == "review_pending":
            assert state.sample_id is not None
            return "resumed", self._accept(state.sample_id)
        candidates, info = self.generate(unit, ctx)
        best, decision = self.decide(unit, ctx, candidates)
        accepted = bool(decision is not None and decision.accepted)
        if state.kind == "no_candidates":
            assert state.sample_id is not None
            sid = state.sample_id
            self._store_candidates(sid, candidates, best)
            rec = self.store.get_sample(sid, images=False)
            if accepted and rec.sample.status == "candidate" and not rec.sample.reviewer:
                accepted = self._accept(sid)
            return "resumed", accepted
        gen = self.generation(unit, candidates, best, info, decision, ctx)
        sid = self.store.add_sample(self.make_sample(unit, ctx, candidates[best], gen), self.user, key=unit.key)
        self._store_candidates(sid, candidates, best)
        if accepted:
            accepted = self._accept(sid)
        return "built", accepted

    # ---------------------------------------------------------------- the whole build
    def run(self) -> BuildSummary:
        from refcoco_edit.store import DuplicateKeyError, StoreError

        t0 = time.perf_counter()
        summary = BuildSummary(self.data.dataset, self.data.split_by, policy=self.policy.name)
        selected, judged, why = select_refs(self.data, self.cfg.split, self.cfg.limit,
                                            use_images=self.cfg.use_images, progress=self.progress)
        summary.refs, summary.eligible, summary.selected = judged, judged - sum(why.values()), len(selected)
        summary.ineligible = dict(why)
        units = self.plan(selected)
        summary.units = len(units)
        states = {u.key: self.state(u.key) for u in units}
        todo = {u.pipeline for u in units
                if states[u.key].kind not in ("done", "review_pending")
                and (states[u.key].kind != "failed" or self.cfg.retry_failed)}
        for name in sorted(todo):  # missing weights fail here, before any unit is built
            self.pipeline(name)

        from tqdm import tqdm

        bar = tqdm(total=len(units), desc="build", unit="sample", disable=not self.progress, dynamic_ncols=True)
        try:
            for ref_id, group in groupby(units, key=lambda u: u.ref_id):
                ctx = _RefContext(self.data, ref_id)
                for unit in group:
                    state = states[unit.key]
                    if state.kind == "done":
                        summary.skipped_done += 1
                    elif state.kind == "failed" and not self.cfg.retry_failed:
                        summary.skipped_failed += 1
                    else:
                        try:
                            outcome, accepted = self.run_unit(unit, ctx, state)
                            setattr(summary, outcome, getattr(summary, outcome) + 1)
                            summary.accepted += accepted
                            summary.by_pipeline[unit.pipeline] = summary.by_pipeline.get(unit.pipeline, 0) + 1
                        except DuplicateKeyError:  # another builder stored it first
                            summary.skipped_done += 1
                        except StoreError:
                            raise
                        except Exception as exc:  # one bad sample must not stop the build
                            self._fail(unit, exc, summary)
                    bar.update(1)
                    bar.set_postfix(built=summary.built + summary.resumed, skipped=summary.skipped_done
                                    + summary.skipped_failed, failed=summary.failed, refresh=False)
        finally:
            bar.close()
        summary.seconds = round(time.perf_counter() - t0, 3)
        return summary

    def _fail(self, unit: Unit, exc: Exception, summary: BuildSummary) -> None:
        from refcoco_edit.store import DuplicateKeyError

        message = str(exc) if isinstance(exc, RefcocoEditError) else f"{type(exc).__name__}: {exc}"
        log.warning("%s failed: %s", unit.key, message)
        log.debug("%s failed", unit.key, exc_info=exc)
        try:
            self.store.record_failure(unit.key, message, self.user, image_id=unit.image_id, ref_id=unit.ref_id,
                                      ann_id=unit.ann_id, split=unit.split, edit_type=unit.edit_type,
                                      pipeline=unit.pipeline)
        except DuplicateKeyError:  # the sample was stored before the failure; a rerun finishes it
            pass
        summary.failed += 1
        summary.failures.append({"key": unit.key, "error": message})


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


def build(data, store, config: BuildConfig, *, pipeline_factory: PipelineFactory | None = None,
          rephraser: Any = None, progress: bool = False, user: str = BUILD_USER) -> BuildSummary:
    """Build `config` from a `RefCOCO` into an open `Store`; see the module docstring.

    `pipeline_factory(name)` replaces the loading of pipelines (tests, or pipelines already loaded);
    `rephraser` is the enrichment back end (default: the offline rule-based rephraser).
    """
    return Builder(data, store, config, pipeline_factory=pipeline_factory, rephraser=rephraser,
                   progress=progress, user=user).run()
