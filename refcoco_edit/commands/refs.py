"""`refcoco-edit refs`: list refs with their sentences."""

from __future__ import annotations

import argparse

from refcoco_edit.commands._common import add_refcoco_args, open_refcoco, print_json


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("refs", help="list refs and their referring expressions")
    add_refcoco_args(p)
    p.add_argument("--split", help="only this split (train, val, testA, testB, ...)")
    p.add_argument("--image-id", type=int, help="only refs of this image")
    p.add_argument("--category-id", type=int, help="only refs of this category")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    return p


def run(args: argparse.Namespace) -> int:
    data = open_refcoco(args)
    ids = data.ref_ids(
        split=args.split,
        image_ids=None if args.image_id is None else [args.image_id],
        cat_ids=None if args.category_id is None else [args.category_id],
    )
    for ref_id in ids:
        ref = data.ref(ref_id)
        row = {
            "ref_id": ref["ref_id"],
            "ann_id": ref["ann_id"],
            "image_id": ref["image_id"],
            "category": data.category(data.ref_ann(ref_id)["category_id"])["name"],
            "split": ref["split"],
            "sentences": [s["sent"] for s in ref["sentences"]],
        }
        if args.json:
            print_json(row)
        else:
            print(f"{row['ref_id']:>7} {row['split']:6s} img {row['image_id']:<8} {row['category']:12s} "
                  + " | ".join(row["sentences"]))
    return 0
