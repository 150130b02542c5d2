"""Options shared by `run` and `score` (metrics and their models)."""

from __future__ import annotations

import argparse


def add_metric_args(p: argparse.ArgumentParser) -> None:
    from refcoco_edit.models.resolver import add_model_argument

    g = p.add_argument_group("scoring")
    g.add_argument("--metrics", metavar="A,B",
                   help="metrics or outputs to compute, e.g. l2_bg,clip_sim_fg,loc_iou (default: all; those whose "
                        "weights are not configured are reported unavailable)")
    g.add_argument("--clip-model", default="clip-vit-l14", metavar="NAME",
                   help="CLIP model (resolver name) of clip_sim_fg and clip_t (default clip-vit-l14; tests: tiny-clip)")
    g.add_argument("--aesthetic-model", default="aesthetic", metavar="NAME",
                   help="aesthetic head (resolver name; default 'aesthetic', which must be configured; tests: "
                        "tiny-aesthetic)")
    g.add_argument("--aesthetic-clip-model", metavar="NAME",
                   help="CLIP model under the aesthetic head (default: the head's config, else clip-vit-l14)")
    g.add_argument("--batch-size", type=int, default=16, metavar="N", help="samples per scoring batch (default 16)")
    g.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples of the 95%% confidence intervals (default 1000)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present; per process under accelerate)")
    add_model_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print results.json instead of the table")


def score_config(args: argparse.Namespace):
    from benchmark.run.scoring import ScoreConfig
    from refcoco_edit.models.resolver import parse_model_overrides

    return ScoreConfig(metrics=args.metrics, clip_model=args.clip_model, aesthetic_model=args.aesthetic_model,
                       aesthetic_clip_model=args.aesthetic_clip_model,
                       model_overrides=parse_model_overrides(args.model_overrides), device=args.device,
                       batch_size=args.batch_size, bootstrap=args.bootstrap, progress=not args.no_progress)


def print_results(results: dict, as_json: bool, out) -> None:
    from refcoco_edit.io import dumps

    if as_json:
        print(dumps(results, indent=1))
        return
    from benchmark.leaderboard import format_results_table

    print(format_results_table(results))
    print(f"wrote {out}/results.json and {out}/samples.jsonl")
