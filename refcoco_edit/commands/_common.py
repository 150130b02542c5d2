"""Arguments shared by several subcommands: reading a RefCOCO dataset, asking an LLM for rephrasings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_refcoco_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refcoco", required=True, metavar="ROOT",
                   help="REFER root folder (holds <dataset>/refs(<split_by>).p); 'sample' = the bundled RefShapes copy")
    p.add_argument("--dataset", metavar="NAME",
                   help="refcoco, refcoco+, refcocog, refshapes ... (inferred when ROOT has one)")
    p.add_argument("--split-by", metavar="BY",
                   help="unc, google, umd ... (inferred when the dataset has one refs file)")
    p.add_argument("--images", metavar="DIR", help="image folder (default ROOT/images/mscoco/images/train2014)")


def add_llm_args(g: Any, *, offline: bool = True, attempts: bool = False, no_cache: bool = False) -> None:
    """The LLM options of an argument group (`--llm-base-url`, `--llm-model`, `--llm-timeout`,
    `--llm-cache`, and where the command offers them `--offline`, `--llm-attempts`, `--no-llm-cache`)."""
    if offline:
        g.add_argument("--offline", action="store_true",
                       help="use the rule-based rephraser even if an LLM is configured")
    g.add_argument("--llm-base-url", metavar="URL", help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL)")
    g.add_argument("--llm-model", metavar="NAME", help="model name (default gpt-4o-mini)")
    g.add_argument("--llm-timeout", type=float, default=60.0, metavar="S", help="seconds per request (default 60)")
    if attempts:
        g.add_argument("--llm-attempts", type=int, default=4, metavar="K", help="attempts per request (default 4)")
    g.add_argument("--llm-cache", type=Path, metavar="DIR", help="answer cache folder (default <cache>/llm)")
    if no_cache:
        g.add_argument("--no-llm-cache", action="store_true", help="neither read nor write the answer cache")


def llm_settings(args: argparse.Namespace):
    """The LLMSettings the options name, or None when no LLM is configured (or `--offline`)."""
    from refcoco_edit.text.llm import LLMSettings, llm_configured

    if getattr(args, "offline", False) or not llm_configured(args.llm_base_url, args.llm_model):
        return None
    kw: dict[str, Any] = {"model": args.llm_model} if args.llm_model else {}
    if hasattr(args, "llm_attempts"):
        kw["max_attempts"] = args.llm_attempts
    if hasattr(args, "no_llm_cache"):
        kw["use_cache"] = not args.no_llm_cache
    return LLMSettings(base_url=args.llm_base_url, timeout=args.llm_timeout, cache_dir=args.llm_cache, **kw)


def open_refcoco(args: argparse.Namespace):
    from refcoco_edit.refer.reader import RefCOCO

    return RefCOCO.load(args.refcoco, args.dataset, args.split_by, images=args.images)


def print_json(obj) -> None:
    import json

    print(json.dumps(obj, ensure_ascii=False, indent=None, sort_keys=False))
