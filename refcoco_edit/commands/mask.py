"""`refcoco-edit mask`: write a referred object's mask as an 8-bit PNG (0 and 255)."""

from __future__ import annotations

import argparse
from pathlib import Path

from refcoco_edit.commands._common import add_refcoco_args, open_refcoco


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("mask", help="write the mask of a ref's object as a PNG of the image's size")
    add_refcoco_args(p)
    p.add_argument("--ref-id", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    return p


def run(args: argparse.Namespace) -> int:
    from refcoco_edit.imaging.masks import save_mask_png

    data = open_refcoco(args)
    save_mask_png(data.mask(args.ref_id), args.out)
    print(args.out)
    return 0
