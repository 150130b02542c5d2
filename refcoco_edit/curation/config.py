"""What a build is asked to do: the `BuildConfig`, its checks, and the pipelines a build can use.

The build's pipelines are the model pipelines of `refcoco_edit.pipelines` plus `synthetic` (the
RefShapes ground truth), all declaring their capabilities on their classes; the checks read those
declarations (which edits each makes, whether it loads a model), never pipeline names. Only the
standard library is imported at module level, so the CLI can list the names for `--help`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from refcoco_edit.curation.policies import AcceptPolicy
from refcoco_edit.errors import InputError
from refcoco_edit.pipelines import PIPELINES
from refcoco_edit.pipelines.capabilities import EditPipeline, check_pipeline_class
from refcoco_edit.registry import Registry

BUILD_PIPELINES: Registry[type[EditPipeline]] = Registry("pipeline", {
    **PIPELINES,
    "synthetic": "refcoco_edit.curation.synthetic:SyntheticPipeline",
}, check=check_pipeline_class)
# Default: a model for the edits that need one, and the weight-free removal, which is as good as
# diffusion on flat backgrounds and costs nothing.
DEFAULT_PIPELINES: tuple[str, ...] = ("region_edit", "classical_inpaint")
DEFAULT_EDITS: tuple[str, ...] = ("replace", "remove", "attribute")
TARGET_EDITS: tuple[str, ...] = ("add", "other")  # edit types whose target the user gives (--target)


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
    rank_clip: str | None = None  # CLIP model name that ranks the candidates of pipelines that rank
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
        unknown = [p for p in pipelines if p not in BUILD_PIPELINES]
        if unknown or not pipelines:
            raise InputError(f"unknown pipeline(s) {', '.join(unknown) or '(none given)'}; "
                             f"use: {', '.join(BUILD_PIPELINES)}")
        edits = tuple(dict.fromkeys(normalise_edit_type(e) for e in self.edits if e.strip()))
        if not edits:
            raise InputError("no edit type given (--edits replace,remove,attribute)")
        makes = {p: BUILD_PIPELINES.load(p).edit_types for p in pipelines}
        if not any(e in makes[p] for p in pipelines for e in edits):
            raise InputError(f"none of the pipelines {', '.join(pipelines)} makes {', '.join(edits)} edits; "
                             + "; ".join(f"{p}: {', '.join(makes[p])}" for p in pipelines))
        for name, value, low in (("--candidates", self.candidates, 1), ("--enrich", self.enrich, 0),
                                 ("--limit", self.limit, 1), ("--steps", self.steps, 1), ("--size", self.size, 8),
                                 ("--seed", self.seed, 0)):
            if value is not None and int(value) < low:
                raise InputError(f"{name} must be at least {low}, got {value}")
        needs_target = [e for e in edits if e in TARGET_EDITS]
        if needs_target and not (self.target and self.target.strip()):
            raise InputError(f"{', '.join(needs_target)} edits need --target (the object to add / the free text)")
        for pipe in self.pipeline_models:
            if pipe not in BUILD_PIPELINES:
                raise InputError(f"--pipeline-model names unknown pipeline {pipe!r}")
            if not BUILD_PIPELINES.load(pipe).needs_weights:
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
