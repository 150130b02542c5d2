"""Arguments shared by the subcommands that read a RefCOCO dataset."""

from __future__ import annotations

import argparse


def add_refcoco_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refcoco", required=True, metavar="ROOT",
                   help="REFER root folder (holds <dataset>/refs(<split_by>).p); 'sample' = the bundled RefShapes copy")
    p.add_argument("--dataset", metavar="NAME",
                   help="refcoco, refcoco+, refcocog, refshapes ... (inferred when ROOT has one)")
    p.add_argument("--split-by", metavar="BY",
                   help="unc, google, umd ... (inferred when the dataset has one refs file)")
    p.add_argument("--images", metavar="DIR", help="image folder (default ROOT/images/mscoco/images/train2014)")


def open_refcoco(args: argparse.Namespace):
    from refcoco_edit.refer.reader import RefCOCO

    return RefCOCO.load(args.refcoco, args.dataset, args.split_by, images=args.images)


def print_json(obj) -> None:
    import json

    print(json.dumps(obj, ensure_ascii=False, indent=None, sort_keys=False))
