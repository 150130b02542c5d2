"""Text renderings: one run's results as a plain table, the leaderboard as Markdown or JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmark.leaderboard.runs import RunEntry
from benchmark.leaderboard.table import (
    DOWN,
    UP,
    best_runs,
    columns,
    contamination_note,
    contamination_notes,
    format_ci,
    format_value,
    group_value,
    groups,
    has_value,
    header,
    leaderboard_dict,
    marked_label,
    warnings_for,
)
from refcoco_edit.io import dumps


def format_results_table(results: dict[str, Any]) -> str:
    """A plain-text table of one results.json (what `rie-bench run` and `score` print)."""
    method = results.get("method") or {}
    ds = results.get("dataset") or {}
    lines = [f"{method.get('label') or method.get('name')}: {ds.get('samples')} samples of {ds.get('source')}"
             + (f" (split {ds['split']})" if ds.get("split") else "")]
    metrics = results.get("metrics") or {}
    width = max([len(header(n, True)) for n in metrics] + [6])
    lines.append(f"{'metric':<{width}}  {'value':>10}  {'95% CI':<24}  {'n':>5}")
    for name, r in metrics.items():
        head = header(name, bool(r.get("higher_is_better", True)))
        if not has_value(r):
            lines.append(f"{head:<{width}}  {'n/a':>10}  {r.get('reason') or ''}")
            continue
        value, ci = format_value(r["value"]), format_ci(r.get("ci"))
        lines.append(f"{head:<{width}}  {value:>10}  {ci:<24}  {r.get('n', 0):>5}")
    record = results.get("contamination") or {}
    if record.get("checked") and record.get("count"):
        lines.append(f"warning: the model was {contamination_note(record)}")
    elif record.get("checked") is False:
        lines.append(f"note: not checked for training on evaluation pictures ({record.get('reason')})")
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(runs: Sequence[RunEntry], *, grid_image: str | None = None,
                    grid_ids: Sequence[str] | None = None) -> str:
    """The leaderboard as Markdown: the main table, notes, then one table per edit type."""
    cols, dropped = columns(runs)
    best = best_runs(runs, cols)
    out = ["# RefCOCO-Edit leaderboard", ""]
    out.append("| method | n | " + " | ".join(header(n, h) for n, h in cols) + " |")
    out.append("|---|---:|" + "---|" * len(cols))
    for i, run in enumerate(runs):
        cells = []
        for name, _ in cols:
            r = run.metrics.get(name)
            if not has_value(r):
                cells.append("n/a")
                continue
            value = format_value(r["value"])
            value = f"**{value}**" if i in best.get(name, []) else value
            ci = format_ci(r.get("ci"))
            cells.append(f"{value} {ci}".strip())
        out.append(f"| {_md_escape(marked_label(run))} | {run.samples} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"{UP} higher is better, {DOWN} lower is better; mean [bootstrap 95% CI]; best mean in bold.")
    for name, reason in dropped.items():
        out.append(f"- `{name}` not shown: {_md_escape(reason)}")
    for warning in warnings_for(runs):
        out.append(f"- **warning**: {_md_escape(warning)}")
    for note in contamination_notes(runs):
        out.append(f"- **trained on evaluation data**: {_md_escape(note)}" if note.startswith("†")
                   else f"- {_md_escape(note)}")
    edit_types = groups(runs)
    if edit_types:
        out += ["", "## By edit type", ""]
        out.append("| edit type | method | " + " | ".join(header(n, h) for n, h in cols) + " |")
        out.append("|---|---|" + "---|" * len(cols))
        for group in edit_types:
            for run in runs:
                cells = [format_value(group_value(run, n, group)) for n, _ in cols]
                out.append(f"| {group} | {_md_escape(marked_label(run))} | " + " | ".join(cells) + " |")
    if grid_image:
        out += ["", "## Samples", "", f"![samples across methods]({grid_image})", ""]
        for k, sid in enumerate(grid_ids or [], 1):
            out.append(f"{k}. `{sid}`")
    return "\n".join(out) + "\n"


def render_json(runs: Sequence[RunEntry]) -> str:
    return dumps(leaderboard_dict(runs), indent=1) + "\n"
