"""`refcoco-edit synth`: stage-1 (self-supervised) training samples for ReferDiffusion.

Covers each referred object with a flat named colour (dilated mask), asks to "paint {a subject} on
the {colour} mask" (`--prompt-style mask`, the default and the paper's: the coloured mask is the
referring part; `--prompt-style expression`: the ref's expression is; exact spans either way), target =
the original picture; random crop and flip (left/right swapped in the expression). Only `train` refs
unless `--allow-eval-splits` (evaluation pictures would become training targets; a warning is printed).
Written in the export's dataset format (parquet + save_to_disk + card). `--enrich N` asks an LLM for
N rephrasings per prompt (needs `--llm-base-url`, `--llm-model` or OPENAI_BASE_URL/OPENAI_API_KEY); off by default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from refcoco_edit.commands._common import add_llm_args, add_refcoco_args, open_refcoco, print_json


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("synth", help="stage-1 synthetic samples: cover the object with a colour, "
                                     "prompt to paint it back")
    add_refcoco_args(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset folder to write")
    p.add_argument("--split", default="train", metavar="X",
                   help="only this RefCOCO split; 'all' for every split (default train)")
    p.add_argument("--allow-eval-splits", action="store_true",
                   help="allow evaluation splits (val, testA, testB, test): their pictures become training "
                        "targets, so a model trained on the output has seen RefCOCO-Edit's evaluation images")
    p.add_argument("--prompt-style", choices=("mask", "expression"), default="mask",
                   help="mask: 'paint a man on the red mask', the mask is the referring part (the paper's, "
                        "default); expression: the RefCOCO expression is the referring part")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N samples")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--no-flip", action="store_true", help="never flip")
    p.add_argument("--no-crop", action="store_true", help="never crop")
    p.add_argument("--dilation-ratio", type=float, default=0.05, metavar="R",
                   help="dilation radius = R x sqrt(object area), clipped to [3, 25] px (default 0.05)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="rows per parquet file (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds an earlier dataset")
    p.add_argument("--no-save-to-disk", action="store_true", help="skip the DIR/hf save_to_disk copy")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    g = p.add_argument_group("LLM rephrasing (off by default)")
    g.add_argument("--enrich", type=int, default=0, metavar="N", help="ask the LLM for N rephrasings per prompt")
    add_llm_args(g, offline=False)
    return p


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from refcoco_edit.dataset.synth import SynthConfig, selected_eval_splits, synth_dataset
    from refcoco_edit.errors import InputError

    split = None if args.split == "all" else args.split
    cfg = SynthConfig(seed=args.seed, limit=args.limit, split=split, enrich=args.enrich,
                      dilation_ratio=args.dilation_ratio, flip_prob=0.0 if args.no_flip else 0.5,
                      crop_prob=0.0 if args.no_crop else 0.5, prompt_style=args.prompt_style,
                      allow_eval_splits=args.allow_eval_splits).check()
    rephraser = None
    if args.enrich:
        from refcoco_edit.text.llm import LLMRephraser, LLMSettings, llm_configured

        if not (llm_configured(args.llm_base_url, args.llm_model) or os.environ.get("OPENAI_API_KEY")):
            raise InputError("--enrich needs an LLM: give --llm-base-url or --llm-model, or set OPENAI_BASE_URL "
                             "or OPENAI_API_KEY (the templates already vary the phrasing without one)")
        kw = {"model": args.llm_model} if args.llm_model else {}
        rephraser = LLMRephraser(LLMSettings(base_url=args.llm_base_url, timeout=args.llm_timeout,
                                             cache_dir=args.llm_cache, **kw))
    data = open_refcoco(args)
    evals = selected_eval_splits(data, cfg)
    if evals and cfg.allow_eval_splits:
        print(f"warning: using evaluation split(s) {', '.join(evals)}: a model trained on this data has seen "
              "pictures RefCOCO-Edit evaluates on (`rie-bench run` reports the overlap)", file=sys.stderr)
    summary = synth_dataset(data, args.out, cfg, rephraser=rephraser, shard_size=args.shard_size,
                            overwrite=args.overwrite, save_to_disk=not args.no_save_to_disk, progress=not args.json)
    if args.json:
        print_json(summary.to_dict())
        return 0
    exp = summary.export
    print(f"wrote {summary.written} stage-1 samples to {exp.out}: "
          + ", ".join(f"{k} {v}" for k, v in exp.splits.items()))
    print(f"  flipped {summary.flipped} (flip skipped {summary.flips_skipped}), cropped {summary.cropped}")
    if summary.skipped:
        print("  skipped refs: " + ", ".join(f"{k} {v}" for k, v in summary.skipped.items()))
    return 0
