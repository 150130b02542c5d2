"""`refcoco-edit build`: eligible refs -> prompts -> pipeline candidates -> `candidate` samples in a store.

Resumable (a rerun with the same arguments skips what is stored and finishes what a killed run left
half done), fault tolerant (a failing sample is recorded with its error and skipped) and, with
`--auto-accept`, able to accept samples without a person (recorded as reviewer `auto:<policy>`).
See `refcoco_edit.curation.build` for the rules; the summary is printed at the end (`--json` for scripts).

    refcoco-edit build --refcoco sample --store demo_out/store.db \\
        --pipelines synthetic,classical_inpaint --auto-accept oracle
"""

from __future__ import annotations

import argparse
from pathlib import Path

from refcoco_edit.commands._common import add_llm_args, add_refcoco_args, llm_settings, open_refcoco, print_json


def register(sub) -> argparse.ArgumentParser:
    from refcoco_edit.curation.config import BUILD_PIPELINES, DEFAULT_PIPELINES
    from refcoco_edit.models.resolver import add_model_argument

    p = sub.add_parser(
        "build",
        help="build candidate samples into a store: prompts + pipelines per eligible ref (resumable)",
        description="For each eligible ref, edit type and pipeline: compose the prompt, generate K candidates, "
                    "store one `candidate` sample. Rerun with the same arguments to resume.",
    )
    add_refcoco_args(p)
    p.add_argument("--store", type=Path, required=True, metavar="PATH", help="annotation store (SQLite file)")
    p.add_argument("--split", metavar="X", help="only refs of this split (train, val, testA, testB ...)")
    p.add_argument("--limit", type=int, metavar="N", help="build the first N eligible refs")
    p.add_argument("--pipelines", metavar="A,B",
                   help=f"pipelines among {', '.join(BUILD_PIPELINES)} (default {','.join(DEFAULT_PIPELINES)}); "
                        "each unit uses those that can make its edit type")
    p.add_argument("--edits", default="replace,remove,attribute", metavar="A,B",
                   help="edit types (default replace,remove,attribute; add and other need --target)")
    p.add_argument("--target", metavar="TEXT", help="the object to add (add) or the free text (other)")
    p.add_argument("--candidates", type=int, default=1, metavar="K", help="candidates per sample (default 1)")
    p.add_argument("--auto-accept", default="none", metavar="POLICY",
                   help="none (default) | oracle (RefShapes ground truth) | score>=X (CLIP score, needs --rank-clip)")
    p.add_argument("--seed", type=int, default=0, help="build seed: prompts, targets, examples and candidate seeds")
    p.add_argument("--steps", type=int, metavar="N", help="denoising steps of the diffusion pipelines (default 50)")
    p.add_argument("--size", type=int, metavar="PX", help="working size of the longer side (default the source's)")
    p.add_argument("--rank-clip", metavar="NAME", help="rank region_edit / inpaint candidates by CLIP (a model name)")
    p.add_argument("--pipeline-model", action="append", default=[], metavar="PIPELINE=NAME",
                   help="model (resolver name) of a pipeline, e.g. region_edit=tiny-sd15 (repeatable)")
    add_model_argument(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--dtype", help="float32, float16, bfloat16 (default: float16 on CUDA, float32 on CPU)")
    p.add_argument("--retry-failed", action="store_true", help="build again the units an earlier run failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    g = p.add_argument_group("enrichment (rephrasings stored unreviewed in generation['enriched'])")
    g.add_argument("--enrich", type=int, default=0, metavar="N", help="N rephrasings per prompt (default 0)")
    add_llm_args(g)
    return p


def _rephraser(args: argparse.Namespace):
    from refcoco_edit.text.llm import make_rephraser

    return make_rephraser(llm_settings(args), seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from refcoco_edit.curation.builder import build
    from refcoco_edit.curation.config import DEFAULT_PIPELINES, BuildConfig, parse_pipeline_models, split_list
    from refcoco_edit.models.resolver import parse_model_overrides
    from refcoco_edit.store import Store

    cfg = BuildConfig(
        split=args.split, limit=args.limit,
        pipelines=split_list(args.pipelines) if args.pipelines else DEFAULT_PIPELINES,
        edits=split_list(args.edits), candidates=args.candidates, enrich=args.enrich,
        auto_accept=args.auto_accept, seed=args.seed, steps=args.steps, size=args.size,
        rank_clip=args.rank_clip, target=args.target,
        pipeline_models=parse_pipeline_models(args.pipeline_model),
        model_overrides=parse_model_overrides(args.model_overrides),
        device=args.device, dtype=args.dtype, retry_failed=args.retry_failed,
    ).check()  # bad flags fail before the data is read
    data = open_refcoco(args)
    rephraser = _rephraser(args) if cfg.enrich else None
    with Store.open(args.store) as store:
        summary = build(data, store, cfg, rephraser=rephraser, progress=not args.no_progress)
    if args.json:
        print_json({"store": str(args.store), **summary.to_dict()})
        return 0
    s = summary
    print(f"build {s.dataset}({s.split_by}) -> {args.store} in {s.seconds:.1f} s")
    print(f"  refs judged {s.refs}, eligible {s.eligible}, built for {s.selected}"
          + (" (not eligible: " + ", ".join(f"{k} {v}" for k, v in s.ineligible.items()) + ")" if s.ineligible else ""))
    print(f"  samples: {s.units} planned, {s.built} built, {s.resumed} resumed, {s.skipped_done} skipped as done, "
          f"{s.skipped_failed} skipped as failed before, {s.failed} failed")
    if s.by_pipeline:
        print("  by pipeline: " + ", ".join(f"{k} {v}" for k, v in sorted(s.by_pipeline.items())))
    if s.policy != "none":
        print(f"  auto-accepted ({s.policy}): {s.accepted}")
    for f in s.failures[:20]:
        print(f"  failed {f['key']}: {f['error']}")
    if len(s.failures) > 20:
        print(f"  ... and {len(s.failures) - 20} more failures (refcoco-edit store --store {args.store} list --failed)")
    return 0
