"""`refcoco-edit stats`: counts of a RefCOCO dataset."""

from __future__ import annotations

import argparse

from refcoco_edit.commands._common import add_refcoco_args, open_refcoco, print_json


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("stats", help="count images, annotations, refs and sentences per split")
    add_refcoco_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(args: argparse.Namespace) -> int:
    stats = open_refcoco(args).stats()
    if args.json:
        print_json(stats)
        return 0
    for key in ("dataset", "split_by", "images", "annotations", "categories", "refs", "sentences"):
        print(f"{key:12s} {stats[key]}")
    for split, n in stats["splits"].items():
        print(f"  {split:10s} {n} refs")
    return 0
