"""`refcoco-edit export`: the annotation store -> a Hugging Face dataset folder (and the Hub).

Writes DIR/data/<split>-NNNNN-of-NNNNN.parquet (images embedded), DIR/hf/ (save_to_disk) and
DIR/README.md (dataset card), all or nothing: a row that fails validation stops the export, names
the bad rows and leaves DIR as it was. `--push-to-hub` then uploads the card and the parquet files.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export store samples as a Hugging Face dataset (parquet, save_to_disk, card)")
    p.add_argument("--store", type=Path, required=True, metavar="PATH", help="the store's SQLite file")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset folder to write")
    p.add_argument("--status", default="accepted", metavar="S[,S]",
                   help="statuses to export, comma-separated (default accepted)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="rows per parquet file (default 1000)")
    p.add_argument("--row-group-size", type=int, default=100, metavar="N",
                   help="rows per parquet row group, the unit held in memory (default 100)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds an earlier export")
    p.add_argument("--no-save-to-disk", action="store_true", help="skip the DIR/hf save_to_disk copy")
    p.add_argument("--name", default="RefCOCO-Edit", help="dataset name in the card")
    p.add_argument("--source", default="", help="where the data came from, for the card (e.g. 'refcoco (unc)')")
    p.add_argument("--license", default="cc-by-4.0", help="licence id of the annotations (default cc-by-4.0)")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload to this Hub dataset repo (user/name)")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from refcoco_edit.commands._common import print_json
    from refcoco_edit.dataset.card import CardInfo
    from refcoco_edit.dataset.export import export_store, push_to_hub
    from refcoco_edit.errors import InputError

    if args.private and not args.push_to_hub:
        raise InputError("--private only applies with --push-to-hub")
    statuses = [s.strip() for s in args.status.split(",") if s.strip()]
    card = CardInfo(pretty_name=args.name, source=args.source, licence=args.license)
    summary = export_store(args.store, args.out, statuses=statuses, shard_size=args.shard_size,
                           row_group_size=args.row_group_size, overwrite=args.overwrite, card=card,
                           save_to_disk=not args.no_save_to_disk, progress=not args.json)
    out = summary.to_dict()
    if args.push_to_hub:
        out["hub_url"] = push_to_hub(args.out, args.push_to_hub, private=args.private, token=args.token)
    if args.json:
        print_json(out)
        return 0
    print(f"exported {summary.rows} rows to {summary.out}: "
          + ", ".join(f"{k} {v}" for k, v in summary.splits.items()))
    print(f"  {len(summary.files)} parquet file(s), {summary.download_size / 1e6:.1f} MB; "
          f"card {summary.out / 'README.md'}")
    if args.push_to_hub:
        print(f"  pushed to {out['hub_url']}")
    return 0
