"""The progress page: counts by status, edit type, pipeline and annotator, and each annotator's
throughput, read from the store's counts and its audit log.

Throughput: submissions per active hour. Active time is the sum of the gaps between a user's
consecutive logged actions that are at most `IDLE_GAP_S` long, so lunch breaks and nights do not
count as work; a user with one action has no measurable active time (throughput shown as "-").
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from annotation_app.auth import RATE, require_role
from annotation_app.handlers.common import markdown_table

IDLE_GAP_S = 15 * 60.0


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def active_seconds(times: list[float], idle_gap_s: float = IDLE_GAP_S) -> float:
    """Sum of the gaps between consecutive times (sorted) that are at most `idle_gap_s`."""
    ts = sorted(times)
    return float(sum(b - a for a, b in zip(ts, ts[1:]) if b - a <= idle_gap_s))


def throughput(ctx) -> list[dict[str, Any]]:
    """Per annotator: samples made, submitted, accepted, rejected, sent back; active hours; submissions/hour."""
    made: dict[str, str] = {}  # sample id -> annotator
    for rec in ctx.reads.list_samples(images=False, failed=None):
        made[rec.sample.sample_id] = rec.sample.annotator
    times: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in ctx.reads.audit():
        if e.action in ("assign", "release", "add_user", "set_password"):
            continue  # bookkeeping, not work
        times[e.user].append(_ts(e.ts))
        status = e.diff.get("status")
        new_status = status[1] if isinstance(status, list) and len(status) == 2 else None
        if e.action == "add":
            counts[e.user]["made"] += 1
        if new_status == "candidate" and e.action in ("add", "update", "set_status"):
            counts[e.user]["submitted"] += 1
        if e.action == "review" and e.sample_id in made:
            decision = (e.diff.get("review") or {}).get("decision")
            if decision in ("accept", "reject", "send_back"):
                counts[made[e.sample_id]][{"accept": "accepted", "reject": "rejected",
                                            "send_back": "sent back"}[decision]] += 1
                counts[e.user]["reviewed"] += 1
    out = []
    for user in sorted(set(counts) | set(times)):
        c = counts[user]
        hours = active_seconds(times[user]) / 3600.0
        out.append({"user": user, "made": c["made"], "submitted": c["submitted"], "accepted": c["accepted"],
                    "rejected": c["rejected"], "sent back": c["sent back"], "reviewed": c["reviewed"],
                    "active hours": round(hours, 2),
                    "submitted / hour": round(c["submitted"] / hours, 1) if hours > 0 else None})
    return out


def progress_report(ctx, username: str | None) -> dict[str, Any]:
    """The page's content: a Markdown summary and the throughput rows (any signed-in user)."""
    require_role(ctx.reads, username, RATE, "see progress")
    stats = ctx.reads.stats()
    parts = [f"**{stats['samples']}** samples · {stats['candidates']} candidates · {stats['reviews']} reviews · "
             f"{stats['assignments']} refs held right now · {len(ctx.queue.ref_ids)} eligible refs in the queue"]
    for key, title in (("by_status", "Status"), ("by_edit_type", "Edit type"), ("by_pipeline", "Pipeline"),
                       ("by_annotator", "Annotator")):
        rows = [[k if k not in ("", None) else "(none)", v] for k, v in stats[key].items()]
        parts.append(f"#### By {title.lower()}\n\n" + markdown_table([title, "samples"], rows))
    rows = throughput(ctx)
    columns = ["user", "made", "submitted", "accepted", "rejected", "sent back", "reviewed", "active hours",
               "submitted / hour"]
    return {"summary": "\n\n".join(parts), "throughput": [[r[c] if r[c] is not None else "-" for c in columns]
                                                           for r in rows],
            "throughput_columns": columns, "stats": stats}
