"""`rie-bench run`: generate a method's outputs on RefCOCO-Edit (resumable), score them, print the table.

    rie-bench run --method blended --dataset sample --split val --out runs/blended
    accelerate launch -m benchmark.cli run --method ip2p --dataset DIR --out runs/ip2p   # several GPUs
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    from benchmark.commands._common import add_metric_args

    p = sub.add_parser(
        "run",
        help="run a method on RefCOCO-Edit and score it (outputs cached: a killed run resumes)",
        description="Generate one output per sample (cached as OUT/outputs/<sample_id>.png, so a rerun resumes), "
                    "score them, write OUT/results.json and OUT/samples.jsonl, print the table. "
                    "Under `accelerate launch` the samples are shared among the processes.",
    )
    p.add_argument("--method", required=True, metavar="NAME",
                   help="a method of `rie-bench list` (identity, reference, blended, ip2p, magicbrush, "
                        "instructdiffusion, seg_inpaint, referdiffusion) or module:Class")
    p.add_argument("--dataset", required=True, metavar="PATH_OR_HUB_ID",
                   help="an exported RefCOCO-Edit folder, a Hub dataset id, or 'sample' (the RefShapes RefCOCO-Edit, "
                        "built once into the cache)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="run folder")
    p.add_argument("--split", metavar="S", help="split to run on (default: every split)")
    p.add_argument("--limit", type=int, metavar="N", help="the first N samples only")
    p.add_argument("--seed", type=int, default=0, help="run seed; each sample's seed derives from it and its id")
    p.add_argument("--method-model", metavar="NAME_OR_PATH",
                   help="the method's weights: a resolver name (e.g. tiny-ip2p) or a folder / Hub id for its "
                        "default model; for referdiffusion the checkpoint folder")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. segmenter=refshapes, guidance_scale=5 (repeatable)")
    p.add_argument("--steps", type=int, metavar="N", help="denoising steps (default: the method's)")
    p.add_argument("--size", type=int, metavar="PX",
                   help="working size of the longer side (default: the method's, 512)")
    p.add_argument("--dtype", help="float32, float16, bfloat16 (default: float16 on CUDA, float32 on CPU)")
    p.add_argument("--label", help="the run's name in leaderboards (default: method and model)")
    p.add_argument("--shard", metavar="I/N", help="run share I of N by hand (0-based); the last share to finish merges")
    p.add_argument("--overwrite", action="store_true",
                   help="discard OUT's outputs when they come from another configuration")
    add_metric_args(p)
    return p


def _shard(text: str | None) -> tuple[int, int] | None:
    from refcoco_edit.errors import InputError

    if not text:
        return None
    i, sep, n = text.partition("/")
    try:
        return int(i), int(n)
    except ValueError:
        raise InputError(f"--shard expects I/N, e.g. 0/4, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from benchmark.commands._common import print_results, score_config
    from benchmark.methods.base import parse_option_items
    from benchmark.run.runner import RunConfig, run_benchmark

    base = score_config(args)
    config = RunConfig(**vars(base), method=args.method, dataset=args.dataset, out=args.out, split=args.split,
                       limit=args.limit, seed=args.seed, method_model=args.method_model,
                       method_options=parse_option_items(args.method_option), steps=args.steps, size=args.size,
                       dtype=args.dtype, label=args.label, overwrite=args.overwrite, shard=_shard(args.shard))
    summary = run_benchmark(config)
    if summary.results is None:
        print(f"shard done: {summary.generated} generated, {summary.cached} cached, {summary.scored} scored")
        return 0
    if not args.json:
        print(f"{summary.generated} generated, {summary.cached} reused from {args.out / 'outputs'}")
    print_results(summary.results, args.json, args.out)
    return 0
