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

from refcoco_edit.commands._common import add_llm_args, add_refcoco_args, llm_settings, open_refcoco, print_json


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
    add_llm_args(g, attempts=True, no_cache=True)
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
        from refcoco_edit.text.llm import enrich_batch, make_rephraser

        rephraser = make_rephraser(llm_settings(args), seed=args.seed)
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
