"""`refcoco-edit store`: look into an annotation store, back it up and restore it, from scripts."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("store", help="inspect, check, dump and import an annotation store")
    p.add_argument("--store", type=Path, required=True, metavar="PATH", help="the store's SQLite file")
    actions = p.add_subparsers(dest="store_action", metavar="ACTION")
    actions.required = True

    a = actions.add_parser("stats", help="counts by status, edit type, pipeline, split, annotator")
    a.add_argument("--json", action="store_true")

    a = actions.add_parser("list", help="one line per sample (JSON lines with --json)")
    a.add_argument("--status")
    a.add_argument("--split")
    a.add_argument("--edit-type")
    a.add_argument("--pipeline")
    a.add_argument("--annotator")
    a.add_argument("--failed", action="store_true", help="list failed builds instead of samples")
    a.add_argument("--limit", type=int)
    a.add_argument("--offset", type=int, default=0)
    a.add_argument("--json", action="store_true")

    a = actions.add_parser("show", help="one sample: fields, masks, image files, candidates, reviews, history")
    a.add_argument("sample_id", metavar="ID")
    a.add_argument("--json", action="store_true")

    a = actions.add_parser("dump", help="write a full back-up (JSON lines, images embedded; .gz compresses)")
    a.add_argument("file", type=Path, metavar="FILE")

    a = actions.add_parser("import", help="restore a dump (samples already present are skipped)")
    a.add_argument("file", type=Path, metavar="FILE")
    a.add_argument("--user", default="import", help="name recorded in the audit log")

    a = actions.add_parser("check", help="database integrity, image files, the store's rules and the background "
                                         "invariant; exit 1 when damaged")
    a.add_argument("--verify-blobs", action="store_true", help="also decode every image and check its hash")
    a.add_argument("--json", action="store_true")

    a = actions.add_parser("repair", help="repair samples that break the background invariant (docs/invariant.md)")
    a.add_argument("--background", action="store_true", required=True,
                   help="copy the source into each sample's edited image outside its edit mask M_e")
    a.add_argument("--dry-run", action="store_true", help="list the samples that would be repaired, change nothing")
    a.add_argument("--user", default="repair", help="name recorded in the audit log")
    a.add_argument("--json", action="store_true")
    return p


def _summary(rec) -> dict:
    s = rec.sample
    row = {"sample_id": s.sample_id, "version": rec.version, "status": s.status, "split": s.split,
           "edit_type": s.edit_type, "pipeline": s.pipeline, "ref_id": s.ref_id, "image_id": s.image_id,
           "annotator": s.annotator, "prompt": s.prompt, "key": rec.key}
    if rec.error is not None:
        row["error"] = rec.error
    return row


def _mask_info(mask) -> dict | None:
    import numpy as np

    from refcoco_edit.store import rle

    if mask is None:
        return None
    ys, xs = np.nonzero(mask)
    bbox = None
    if len(xs):
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return {"area": int(mask.sum()), "bbox_xywh": bbox, "rle": rle.encode(mask)}


def _show(store, sample_id: str) -> dict:
    rec = store.get_sample(sample_id, images=False)
    s = rec.sample
    out = _summary(rec)
    for name in ("referring_text", "edit_text", "referring_spans", "edit_spans", "target", "generation",
                 "reviewer", "ann_id", "created_at", "updated_at"):
        out[name] = getattr(s, name)
    for name, digest in rec.blobs.items():
        out[name] = None if digest is None else {"hash": digest, "file": str(store.blobs.path(digest))}
    out["source_mask"] = _mask_info(s.source_mask)
    out["edit_mask"] = _mask_info(s.edit_mask)
    out["candidates"] = [{"candidate_id": c.candidate_id, "seed": c.seed, "model": c.model, "score": c.score,
                          "chosen": c.chosen, "image": c.image_hash, "params": c.params}
                         for c in store.get_candidates(sample_id, images=False)]
    out["reviews"] = [vars(r) for r in store.get_reviews(sample_id)]
    out["history"] = [{"ts": e.ts, "user": e.user, "action": e.action, "changed": sorted(e.diff)}
                      for e in store.audit(sample_id)]
    return out


def run(args: argparse.Namespace) -> int:
    from refcoco_edit.commands._common import print_json
    from refcoco_edit.store import Store

    action = args.store_action
    with Store.open(args.store, create=action == "import") as store:
        if action == "stats":
            stats = store.stats()
            if args.json:
                print_json(stats)
            else:
                print(f"store {args.store} (schema version {stats['schema_version']})")
                print(f"samples {stats['samples']}  failed builds {stats['failed']}  candidates {stats['candidates']}  "
                      f"reviews {stats['reviews']}  users {stats['users']}  active assignments {stats['assignments']}")
                for name in ("status", "edit_type", "pipeline", "split", "annotator"):
                    counts = stats[f"by_{name}"]
                    print(f"  {name:10s} " + ("  ".join(f"{k or '-'}={v}" for k, v in counts.items()) or "-"))
        elif action == "list":
            records = store.list_samples(status=args.status, split=args.split, edit_type=args.edit_type,
                                         pipeline=args.pipeline, annotator=args.annotator,
                                         failed=True if args.failed else False, limit=args.limit,
                                         offset=args.offset, images=False)
            for rec in records:
                row = _summary(rec)
                if args.json:
                    print_json(row)
                else:
                    tail = rec.error if rec.error is not None else row["prompt"]
                    print("\t".join(str(row[k]) for k in ("sample_id", "version", "status", "split", "edit_type",
                                                         "pipeline")) + "\t" + tail)
        elif action == "show":
            info = _show(store, args.sample_id)
            if args.json:
                print_json(info)
            else:
                for k, v in info.items():
                    print(f"{k}: {v}")
        elif action == "dump":
            counts = store.dump(args.file)
            print(f"wrote {args.file}: " + ", ".join(f"{v} {k}s" for k, v in counts.items()))
        elif action == "import":
            result = store.import_(args.file, user=args.user)
            print_json(result)
        elif action == "check":
            report = store.check(verify_blobs=args.verify_blobs)
            if args.json:
                print_json(report)
            else:
                print(("ok" if report["ok"] else "DAMAGED") + f": integrity {', '.join(report['integrity'])}; "
                      f"{len(report['missing_blobs'])} missing and {len(report['corrupt_blobs'])} corrupt images; "
                      f"{report['unreferenced_blobs']} unreferenced images; {report['temp_files']} temporary files; "
                      f"{len(report['invalid_rows'])} rows breaking the store's rules; "
                      f"{len(report['background_rows'])} samples whose edited image differs from the source "
                      "outside M_e")
                for line in report["invalid_rows"]:
                    print(f"  {line}")
                for line in report["background_rows"]:
                    print(f"  {line}")
                if report["background_rows"]:
                    print(f"  repair them with: refcoco-edit store --store {args.store} repair --background")
            return 0 if report["ok"] else 1
        elif action == "repair":
            rows = store.repair_background(args.user, dry_run=args.dry_run)
            if args.json:
                print_json({"dry_run": args.dry_run, "samples": [vars(r) for r in rows]})
            else:
                verb = "would repair" if args.dry_run else "repaired"
                print(f"{verb} {len(rows)} sample(s) whose edited image differed from the source outside M_e")
                for r in rows:
                    print(f"  {r}")
    return 0
