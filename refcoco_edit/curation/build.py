"""`refcoco-edit build`: turn RefCOCO refs into `candidate` samples in an annotation store.

One unit of work is one (ref, edit type, pipeline). For each eligible ref (`selection`), each edit
type asked for and each chosen pipeline that can make that edit (its class's `edit_types`), the
build composes the prompt (`prompts.prompt_for_ref`), runs the pipeline for K seeded candidates and
stores ONE sample with status `candidate` holding all of them; the sample's edited image and edit
mask are the best candidate's (the oracle's choice, else the highest CLIP score when ranked, else
the first). `--pipelines synthetic,classical_inpaint` builds the RefShapes sample without any weight.
`--enrich N` adds N rephrasings (LLM if configured, else the offline rule-based rephraser) to
`generation["enriched"]`, each marked `reviewed: false`; they are suggestions for the annotators,
never the sample's prompt.

The build is split by job; this module gathers the names other code imports:
- `config`: `BuildConfig`, its checks, the build's pipelines (`BUILD_PIPELINES`) and defaults;
- `plan`: units, their keys and seeds, the eligible refs (`select_refs`);
- `targets`: targets, prompts, regions, the text and the example each pipeline is given;
- `policies`: the auto-accept policies (`none`, `oracle`, `score>=X`);
- `ground_truth` and `synthetic`: the RefShapes generator's exact edits, and the pipeline made of them;
- `builder`: the loop that writes samples, candidates and reviews, resumably (`build`).
"""

from __future__ import annotations

from refcoco_edit.curation.builder import BUILD_USER, Builder, BuildSummary, PipelineFactory, build
from refcoco_edit.curation.config import (
    BUILD_PIPELINES,
    DEFAULT_EDITS,
    DEFAULT_PIPELINES,
    BuildConfig,
    parse_pipeline_models,
    split_list,
)
from refcoco_edit.curation.ground_truth import EDITS_FILE, GroundTruth
from refcoco_edit.curation.plan import RefContext, Unit, select_refs, unit_key, unit_seed
from refcoco_edit.curation.policies import ORACLE_MAX_MAD, ORACLE_MAX_RATIO, AcceptPolicy, Decision
from refcoco_edit.curation.synthetic import SyntheticPipeline
from refcoco_edit.curation.targets import ATTRIBUTE_COLOURS, MIN_DILATION, REPLACE_DILATION, Targets, beside_region

__all__ = [
    "ATTRIBUTE_COLOURS", "BUILD_PIPELINES", "BUILD_USER", "DEFAULT_EDITS", "DEFAULT_PIPELINES", "EDITS_FILE",
    "MIN_DILATION", "ORACLE_MAX_MAD", "ORACLE_MAX_RATIO", "REPLACE_DILATION", "AcceptPolicy", "BuildConfig",
    "BuildSummary", "Builder", "Decision", "GroundTruth", "PipelineFactory", "RefContext", "SyntheticPipeline",
    "Targets", "Unit", "beside_region", "build", "parse_pipeline_models", "select_refs", "split_list", "unit_key",
    "unit_seed",
]
