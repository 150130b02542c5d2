"""The build loop: plan the units, find where each stands in the store, run the pipelines, decide
acceptance and write samples, candidates and reviews.

A sample is its chosen candidate inside the candidate's M_e and the source outside it, whatever the
pipeline (`make_sample`): the dataset's background invariant (docs/invariant.md). Candidates are
stored as the pipeline returned them, for the app to show and re-cut.

Resuming: a stored key is skipped; a unit killed between its steps (sample stored, candidates not
yet; or candidates stored, acceptance not yet) is finished from where it stopped, and since seeds are
derived from the build seed and the key, a regenerated candidate has the same pixels. Failed units
are recorded (`Store.record_failure`) and skipped on later runs unless `retry_failed`. An accepted
sample keeps annotator "build" and gets reviewer `auto:<policy>` through a stored review, so the
audit log records who accepted it and why; the decision is also kept in `generation["auto_accept"]`.

What the units need is read from the pipelines' declared capabilities: an example image, a text,
a region, the ground truth; no pipeline is named here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import groupby
from typing import TYPE_CHECKING, Any

import numpy as np

from refcoco_edit.curation.config import BUILD_PIPELINES, BuildConfig
from refcoco_edit.curation.ground_truth import GroundTruth
from refcoco_edit.curation.plan import RefContext, Unit, plan_units, select_refs, unit_seed
from refcoco_edit.curation.policies import Decision, decide
from refcoco_edit.curation.targets import Targets
from refcoco_edit.errors import InputError, RefcocoEditError
from refcoco_edit.pipelines.capabilities import EditPipeline, EditRequest

if TYPE_CHECKING:
    from refcoco_edit.curation.selection import Candidate as Eligible
    from refcoco_edit.pipelines.base import Candidate
    from refcoco_edit.refer.reader import RefCOCO
    from refcoco_edit.schema import Sample
    from refcoco_edit.store import Store

log = logging.getLogger(__name__)

BUILD_USER = "build"
GROUND_TRUTH_REGION = "ground truth"  # the region recorded for a pipeline that brings its own

PipelineFactory = Callable[[str], Any]


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
class _State:
    """Where a unit stands in the store: new, done, failed, or half done (no candidates yet, or
    acceptance pending)."""

    kind: str  # new | done | failed | no_candidates | review_pending
    sample_id: str | None = None


class Builder:
    """Runs a build into a store; see `build`."""

    def __init__(self, data: RefCOCO, store: Store, config: BuildConfig, *,
                 pipeline_factory: PipelineFactory | None = None, rephraser: Any = None, progress: bool = False,
                 user: str = BUILD_USER) -> None:
        self.data = data
        self.store = store
        self.cfg = config.check()
        self.policy = self.cfg.policy
        self.progress = progress
        self.user = user
        self.gt = GroundTruth.find(data)
        needs_gt = [p for p in self.cfg.pipelines if self.pipeline_class(p).needs_ground_truth] + (
            ["--auto-accept oracle"] if self.policy.kind == "oracle" else [])
        if needs_gt and self.gt is None:
            raise InputError(f"{' and '.join(needs_gt)} need(s) the RefShapes generator's ground truth "
                             f"({GroundTruth.path_of(data)}); this dataset has none")
        self._factory = pipeline_factory or self._load_pipeline
        self._pipelines: dict[str, Any] = {}
        if self.cfg.enrich and rephraser is None:
            from refcoco_edit.text.llm import make_rephraser

            rephraser = make_rephraser(None, seed=self.cfg.seed)
        self.targets = Targets(data, self.cfg, self.gt, rephraser)

    # ---------------------------------------------------------------- pipelines
    @staticmethod
    def pipeline_class(name: str) -> type[EditPipeline]:
        """The class of a build pipeline: its declared capabilities."""
        return BUILD_PIPELINES.load(name)

    def _load_pipeline(self, name: str) -> EditPipeline:
        cls = self.pipeline_class(name)
        if cls.needs_ground_truth:
            assert self.gt is not None
            return cls(self.gt)
        return cls(self.cfg.pipeline_models.get(name), dict(self.cfg.model_overrides), self.cfg.device,
                   self.cfg.dtype, progress=False)

    def pipeline(self, name: str) -> EditPipeline:
        if name not in self._pipelines:
            self._pipelines[name] = self._factory(name)
        return self._pipelines[name]

    # ---------------------------------------------------------------- planning
    def plan(self, selected: Sequence[Eligible]) -> list[Unit]:
        return plan_units(self.data, selected, self.cfg.edits, self.cfg.pipelines,
                          lambda name: self.pipeline_class(name).edit_types)

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

    # ---------------------------------------------------------------- one unit
    def generate(self, unit: Unit, ctx: RefContext) -> tuple[list[Candidate], dict]:
        """The unit's candidates (as the pipeline returns them) and what to record about the request."""
        cls = self.pipeline_class(unit.pipeline)
        if cls.needs_mask:
            region, how = self.targets.region_for(ctx, unit.edit_type)
        else:
            region, how = ctx.mask, GROUND_TRUTH_REGION
        info: dict[str, Any] = {"region": how, "prompt_sent": None}
        pipe = self.pipeline(unit.pipeline)
        request = EditRequest(num=self.cfg.candidates, seed=unit_seed(self.cfg.seed, unit.key), ref_id=unit.ref_id,
                              edit_type=unit.edit_type, steps=self.cfg.steps, size=self.cfg.size,
                              rank_by=self.cfg.rank_clip)
        if cls.needs_example:
            example, source = self.targets.example_for(ctx, unit)
            request = replace(request, example=example, example_source=source)
            info["example"] = source
        if cls.needs_text:  # a removal's optional text is its background prompt: left to the pipeline
            request = replace(request, text=self.targets.text_for(ctx, unit.edit_type))
        info["prompt_sent"] = cls.prompt_sent(request)
        candidates = pipe.generate(ctx.image, region, **cls.generate_kwargs(request))
        if not candidates:
            raise RefcocoEditError(f"pipeline {unit.pipeline} returned no candidate")
        return candidates, info

    def decide(self, unit: Unit, ctx: RefContext, candidates: list[Candidate]) -> tuple[int, Decision | None]:
        """The index of the sample's candidate, and the policy's decision (None for policy none)."""
        return decide(self.policy, candidates, pipeline=unit.pipeline,
                      exact=self.pipeline_class(unit.pipeline).needs_ground_truth, gt=self.gt,
                      ref_id=ctx.ref_id, edit_type=unit.edit_type, source=ctx.image)

    def generation(self, unit: Unit, candidates: list[Candidate], best: int, info: dict, decision: Decision | None,
                   ctx: RefContext) -> dict:
        chosen = candidates[best]
        gen = {k: v for k, v in chosen.params.items() if k != "batch_index"}
        gen.update(pipeline=unit.pipeline, model=chosen.model, seed=chosen.seed,
                   seeds=[c.seed for c in candidates], num_candidates=len(candidates), chosen_index=best, **info)
        gen["build"] = {"key": unit.key, "seed": self.cfg.seed}
        if self.cfg.enrich:
            rephrasings, error = self.targets.enrichment_for(ctx, unit.edit_type)
            gen["enriched"] = rephrasings
            if error:
                gen["enrich_error"] = error
        if decision is not None:
            gen["auto_accept"] = decision.to_dict()
        return gen

    def make_sample(self, unit: Unit, ctx: RefContext, chosen: Candidate, generation: dict) -> Sample:
        """The unit's sample: the chosen candidate inside its M_e and the source everywhere else (the
        dataset's background invariant, `imaging.masks.keep_background`; the store applies it too)."""
        from refcoco_edit.imaging.masks import keep_background
        from refcoco_edit.schema import Sample

        p = self.targets.prompt_for(ctx, unit.edit_type)
        edit_mask = np.asarray(chosen.edit_mask, dtype=np.uint8)
        return Sample(
            sample_id="", image_id=unit.image_id, ref_id=unit.ref_id, ann_id=unit.ann_id, split=unit.split,
            source_image=ctx.image, edited_image=keep_background(ctx.image, chosen.image, edit_mask),
            source_mask=ctx.mask, edit_mask=edit_mask, prompt=p.prompt,
            referring_text=p.referring_text, edit_text=p.edit_text, referring_spans=p.referring_spans,
            edit_spans=p.edit_spans, edit_type=unit.edit_type, target=p.target, pipeline=unit.pipeline,
            generation=generation, annotator=self.user, reviewer="", status="candidate",
        )

    def _store_candidates(self, sample_id: str, candidates: list[Candidate], best: int) -> None:
        from refcoco_edit.store import Candidate as StoredCandidate

        self.store.add_candidates(sample_id, [
            StoredCandidate(image=c.image, edit_mask=c.edit_mask, seed=c.seed, params=c.params, model=c.model,
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

    def run_unit(self, unit: Unit, ctx: RefContext, state: _State) -> tuple[str, bool]:
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
                ctx = RefContext(self.data, ref_id)
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


def build(data: RefCOCO, store: Store, config: BuildConfig, *, pipeline_factory: PipelineFactory | None = None,
          rephraser: Any = None, progress: bool = False, user: str = BUILD_USER) -> BuildSummary:
    """Build `config` from a `RefCOCO` into an open `Store`; see `refcoco_edit.curation.build`.

    `pipeline_factory(name)` replaces the loading of pipelines (tests, or pipelines already loaded);
    `rephraser` is the enrichment back end (default: the offline rule-based rephraser).
    """
    return Builder(data, store, config, pipeline_factory=pipeline_factory, rephraser=rephraser,
                   progress=progress, user=user).run()
