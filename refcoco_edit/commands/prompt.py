"""`refcoco-edit prompt`: compose the editing prompt of a ref, with spans, optionally enriched.

`--json` prints {"prompt", "referring_text", "edit_text", "referring_spans", "edit_spans",
"edit_type", "target"}; with `--enrich N` it adds "rephrasings" (the same keys plus "source" and
"reviewed", always false: a person has to accept them), "rejected" ([{"text", "reason"}]) and
"cached". Enrichment goes to an OpenAI-compatible LLM when `--llm-base-url`, `--llm-model` or
OPENAI_BASE_URL is given (key from OPENAI_API_KEY), else to the offline rule-based rephraser
(or always with `--offline`). An LLM that gives no usable answer is an error (exit 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from refcoco_edit.commands._common import add_refcoco_args, open_refcoco, print_json


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("prompt", help="compose a ref's editing prompt with the spans of its referring and edit parts")
    add_refcoco_args(p)
    p.add_argument("--ref-id", type=int, required=True, metavar="N")
    p.add_argument("--edit", required=True, metavar="TYPE",
                   help="replace | remove | attribute | add (add next to) | other (free text)")
    p.add_argument("--target", default=None,
                   help="new object (replace), attribute (attribute), object to add (add), or the free text "
                        "(other; may hold {ref} where the referring expression goes); remove takes none")
    p.add_argument("--seed", type=int, default=0, help="picks the sentence and the template (default 0)")
    p.add_argument("--sentence", type=int, default=None, metavar="I", help="use the ref's I-th sentence (0-based)")
    p.add_argument("--json", action="store_true", help="print JSON")
    g = p.add_argument_group("enrichment")
    g.add_argument("--enrich", type=int, default=0, metavar="N", help="also give N rephrasings")
    g.add_argument("--offline", action="store_true", help="use the rule-based rephraser even if an LLM is configured")
    g.add_argument("--llm-base-url", metavar="URL", help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL)")
    g.add_argument("--llm-model", metavar="NAME", help="model name (default gpt-4o-mini)")
    g.add_argument("--llm-timeout", type=float, default=60.0, metavar="S", help="seconds per request (default 60)")
    g.add_argument("--llm-attempts", type=int, default=4, metavar="K", help="attempts per request (default 4)")
    g.add_argument("--llm-cache", type=Path, metavar="DIR", help="answer cache folder (default <cache>/llm)")
    g.add_argument("--no-llm-cache", action="store_true", help="neither read nor write the answer cache")
    return p


def run(args: argparse.Namespace) -> int:
    from refcoco_edit.errors import InputError
    from refcoco_edit.text.prompts import prompt_for_ref

    data = open_refcoco(args)
    prompt = prompt_for_ref(data, args.ref_id, args.edit, args.target, seed=args.seed, sent_index=args.sentence)
    out = prompt.to_dict(cli=True)
    enrichment = None
    if args.enrich:
        if args.enrich < 1:
            raise InputError("--enrich needs a positive number")
        from refcoco_edit.text.llm import LLMSettings, enrich_batch, llm_configured, make_rephraser

        settings = None
        if not args.offline and llm_configured(args.llm_base_url, args.llm_model):
            kw = {"model": args.llm_model} if args.llm_model else {}
            settings = LLMSettings(base_url=args.llm_base_url, timeout=args.llm_timeout,
                                   max_attempts=args.llm_attempts, cache_dir=args.llm_cache,
                                   use_cache=not args.no_llm_cache, **kw)
        rephraser = make_rephraser(settings, seed=args.seed)
        category = data.category(data.ref_ann(args.ref_id)["category_id"])["name"]
        names = [c["name"] for c in data.categories]
        enrichment = enrich_batch([prompt], args.enrich, rephraser, categories=[category], extra_nouns=names)[0]
        if enrichment.error:
            from refcoco_edit.text.llm import LLMError

            raise LLMError(enrichment.error)
        out["rephrasings"] = [p.to_dict() for p in enrichment.rephrasings]
        out["rejected"] = [{"text": r.text, "reason": r.reason} for r in enrichment.rejected]
        out["cached"] = enrichment.cached
    if args.json:
        print_json(out)
        return 0
    print(out["prompt"])
    print(f"  referring {out['referring_spans']}: {out['referring_text']}")
    print(f"  edit      {out['edit_spans']}: {out['edit_text']}")
    if enrichment is not None:
        for p in enrichment.rephrasings:
            print(f"  [{p.source}, unreviewed] {p.prompt}")
        for r in enrichment.rejected:
            print(f"  [rejected: {r.reason}] {r.text}")
        if not enrichment.rephrasings:
            print("  no rephrasing survived the checks; the original prompt stands")
    return 0
