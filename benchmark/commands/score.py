"""`rie-bench score`: score a folder of outputs named by sample id (a leaderboard submission)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    from benchmark.commands._common import add_metric_args

    p = sub.add_parser(
        "score",
        help="validate and score a folder of outputs named <sample_id>.png",
        description="Check that every sample has a readable RGB output of the right size (or aspect ratio), "
                    "list every problem otherwise, then write results.json and samples.jsonl as `run` does.",
    )
    p.add_argument("--pred", required=True, type=Path, metavar="DIR",
                   help="folder of <sample_id>.png outputs (or a run folder with outputs/)")
    p.add_argument("--dataset", required=True, metavar="PATH_OR_HUB_ID", help="the RefCOCO-Edit the outputs are for")
    p.add_argument("--out", type=Path, metavar="DIR", help="where to write the results (default: the --pred folder)")
    p.add_argument("--split", metavar="S", help="split the submission covers (default: every split)")
    p.add_argument("--limit", type=int, metavar="N", help="the first N samples only")
    p.add_argument("--label", help="the submission's name in leaderboards (default: the folder's name)")
    add_metric_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from benchmark.commands._common import print_results, score_config
    from benchmark.run.runner import score_predictions

    summary = score_predictions(args.pred, args.dataset, out=args.out, split=args.split, limit=args.limit,
                                label=args.label, config=score_config(args))
    results = summary.results or {}
    if not args.json:
        for warning in (results.get("validation") or {}).get("warnings", []):
            print(f"note: {warning}")
    print_results(results, args.json, summary.out)
    return 0
