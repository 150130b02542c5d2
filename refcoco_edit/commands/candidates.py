"""`refcoco-edit candidates`: judge every ref by the two source-object rules.

Text output: one line per ref (ref id, eligible, area share, objects of note, similar objects, reasons)
and a summary. `--json`: JSON lines, one object per ref, with the keys ref_id, ann_id, image_id,
category, eligible, not_sole_subject (rule 1), has_similar (rule 2), measures, reasons and
similar_anns; no summary line, so every line parses.
"""

from __future__ import annotations

import argparse

from refcoco_edit.commands._common import add_refcoco_args, open_refcoco, print_json


def register(sub) -> argparse.ArgumentParser:
    from refcoco_edit.models.resolver import add_model_argument

    p = sub.add_parser("candidates", help="list refs with their eligibility as source objects, measures and reasons")
    add_refcoco_args(p)
    p.add_argument("--split", help="only refs of this split")
    p.add_argument("--ref-id", type=int, action="append", metavar="N", help="only this ref (repeatable)")
    p.add_argument("--eligible-only", action="store_true", help="print only eligible refs")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p.add_argument("--no-images", action="store_true",
                   help="skip appearance (colour, shape, CLIP): category and geometry only, no image is read")
    p.add_argument("--clip-model", metavar="NAME",
                   help="also compare CLIP image features of object crops (a model name, e.g. clip-vit-l14)")
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                   help="change a rule threshold (repeatable), e.g. max_area_share=0.4; names and defaults "
                        "(with why) in refcoco_edit.curation.selection.SelectionThresholds")
    add_model_argument(p)
    return p


def parse_thresholds(items: list[str]):
    """`NAME=VALUE` strings -> SelectionThresholds; unknown names and bad numbers are InputErrors."""
    from dataclasses import fields

    from refcoco_edit.curation.selection import SelectionThresholds
    from refcoco_edit.errors import InputError

    kinds = {f.name: (int if f.type in (int, "int") else float) for f in fields(SelectionThresholds)}
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in kinds:
            raise InputError(f"--threshold {item!r}: expected NAME=VALUE with NAME one of {', '.join(kinds)}")
        try:
            values[name] = kinds[name](value)
        except ValueError:
            raise InputError(f"--threshold {item!r}: {value!r} is not a number") from None
    return SelectionThresholds(**values)


def run(args: argparse.Namespace) -> int:
    from refcoco_edit.curation.selection import select_candidates, summarise
    from refcoco_edit.models.resolver import parse_model_overrides

    data = open_refcoco(args)
    if args.ref_id:
        for r in args.ref_id:
            data.ref(r)  # a clear error for an unknown id
        ids = args.ref_id
    else:
        ids = data.ref_ids(split=args.split)
    thresholds = parse_thresholds(args.threshold)
    cands = select_candidates(data, ids, thresholds, use_images=not args.no_images, clip_model=args.clip_model,
                              model_overrides=parse_model_overrides(args.model_overrides), progress=True)
    for c in cands:
        if args.eligible_only and not c.eligible:
            continue
        if args.json:
            print_json(c.to_dict())
        else:
            m = c.measures
            print(f"{c.ref_id:>7} {'eligible' if c.eligible else 'no      '} {c.category:14s} "
                  f"area {100 * m['area_share']:5.1f}%  note {m['others_of_note']:>2}  "
                  f"similar {len(c.similar_anns):>2}  "
                  + " | ".join(c.reasons))
    if not args.json:
        s = summarise(cands)
        print(f"{s['eligible']} of {s['refs']} refs eligible; {s['sole_subject']} sole subjects, "
              f"{s['no_similar']} without a similar object; appearance measured for {s['appearance_measured']}")
    return 0
