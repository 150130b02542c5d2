"""The leaderboard as one HTML page: the table, notes, the per-edit-type table and the sample grid,
its images embedded as base64 PNGs or written beside the page and linked."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.leaderboard.grid import DEFAULT_GRID, DEFAULT_THUMB, choose_grid_samples, grid_cells, png_bytes
from benchmark.leaderboard.runs import RunEntry
from benchmark.leaderboard.table import (
    CONTAMINATED,
    DOWN,
    UP,
    best_runs,
    columns,
    contamination,
    contamination_note,
    contamination_notes,
    format_ci,
    format_value,
    group_value,
    groups,
    has_value,
    header,
    marked_label,
    warnings_for,
)
from refcoco_edit.io import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
td.best { font-weight: bold; background: #eef7ee; }
.ci { color: #777; font-size: 85%; display: block; }
.grid td { text-align: center; } .grid img { display: block; max-width: 100%; }
.prompt { text-align: left !important; max-width: 16em; font-size: 90%; }
.note { color: #555; } .warning { color: #a40; }
tr.contaminated td:first-child { color: #a40; }
"""


def render_html(runs: Sequence[RunEntry], *, grid: int = DEFAULT_GRID, thumb: int = DEFAULT_THUMB,
                dataset: str | None = None, image_dir: Path | None = None, html_path: Path | None = None) -> str:
    """A self-contained page: the table, notes, per-edit-type table and the sample grid."""
    esc = html.escape
    cols, dropped = columns(runs)
    best = best_runs(runs, cols)
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>RefCOCO-Edit leaderboard</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>RefCOCO-Edit leaderboard</h1>"]
    parts.append("<table class='board'><thead><tr><th>method</th><th>n</th>"
                 + "".join(f"<th>{esc(header(n, h))}</th>" for n, h in cols) + "</tr></thead><tbody>")
    for i, run in enumerate(runs):
        cells = []
        for name, _ in cols:
            r = run.metrics.get(name)
            if not has_value(r):
                reason = esc(str((r or {}).get("reason") or "not computed"))
                cells.append(f"<td title='{reason}'>n/a</td>")
                continue
            cls = " class='best'" if i in best.get(name, []) else ""
            ci = esc(format_ci(r.get("ci")))
            cells.append(f"<td{cls}>{esc(format_value(r['value']))}<span class='ci'>{ci}</span></td>")
        record = contamination(run)
        row = (f"<tr class='contaminated' title='{esc(contamination_note(record))}'>" if record else "<tr>")
        parts.append(f"{row}<td>{esc(marked_label(run))}</td><td>{esc(str(run.samples))}</td>{''.join(cells)}</tr>")
    parts.append("</tbody></table>")
    parts.append(f"<p class='note'>{UP} higher is better, {DOWN} lower is better; mean with its bootstrap 95% "
                 "confidence interval; best mean highlighted.</p>")
    for name, reason in dropped.items():
        parts.append(f"<p class='note'><code>{esc(name)}</code> not shown: {esc(reason)}</p>")
    for warning in warnings_for(runs):
        parts.append(f"<p class='warning'>warning: {esc(warning)}</p>")
    for note in contamination_notes(runs):
        if note.startswith(CONTAMINATED):
            parts.append(f"<p class='warning'>trained on evaluation data: {esc(note)}</p>")
        else:
            parts.append(f"<p class='note'>{esc(note)}</p>")
    edit_types = groups(runs)
    if edit_types:
        parts.append("<h2>By edit type</h2><table><thead><tr><th>edit type</th><th>method</th>"
                     + "".join(f"<th>{esc(header(n, h))}</th>" for n, h in cols) + "</tr></thead><tbody>")
        for group in edit_types:
            for run in runs:
                cells = "".join(f"<td>{esc(format_value(group_value(run, n, group)))}</td>" for n, _ in cols)
                parts.append(f"<tr><td>{esc(group)}</td><td>{esc(marked_label(run))}</td>{cells}</tr>")
        parts.append("</tbody></table>")
    ids = choose_grid_samples(runs, grid)
    if ids:
        labels, rows = grid_cells(runs, ids, dataset=dataset, thumb=thumb)
        parts.append("<h2>Samples</h2><table class='grid'><thead><tr><th>prompt</th>"
                     + "".join(f"<th>{esc(label)}</th>" for label in labels) + "</tr></thead><tbody>")
        for r, (sid, prompt, images) in enumerate(rows):
            cells = []
            for c, image in enumerate(images):
                if image is None:
                    cells.append("<td>missing</td>")
                    continue
                src = _image_src(image, image_dir, html_path, f"r{r:02d}_c{c:02d}.png")
                cells.append(f"<td><img src='{esc(src)}' alt='{esc(labels[c])}: {esc(sid)}'></td>")
            parts.append(f"<tr><td class='prompt'>{esc(prompt)}<br><code>{esc(sid)}</code></td>{''.join(cells)}</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _image_src(image: Image.Image, image_dir: Path | None, html_path: Path | None, name: str) -> str:
    """The `src` of a grid image: a data URL, or the file written into `image_dir`, relative to the page."""
    data = png_bytes(image)
    if image_dir is None:
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    target = atomic_write_bytes(image_dir / name, data)
    if html_path is not None:
        return Path(os.path.relpath(target.absolute(), html_path.absolute().parent)).as_posix()
    return target.as_posix()
