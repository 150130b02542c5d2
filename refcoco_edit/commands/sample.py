"""`refcoco-edit sample`: write the RefShapes synthetic dataset in the REFER layout."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sample", help="write the RefShapes synthetic RefCOCO (same seed, same bytes)")
    p.add_argument("--out", type=Path, required=True, metavar="ROOT")
    p.add_argument("--images", type=int, default=40, metavar="N", help="number of scenes (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-images", action="store_true",
                   help="write only instances.json and the refs file (for the full-size benchmark set)")
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from refcoco_edit.refshapes import generate

    summary = generate(args.out, num_images=args.images, seed=args.seed, write_images=not args.no_images,
                       progress=True)
    print(json.dumps(summary))
    return 0
