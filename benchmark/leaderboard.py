"""Leaderboards from run folders: Markdown, HTML (with the paper's Fig. 7-style image grid) and JSON.

    runs = load_runs(["runs/identity", "runs/blended", "runs/referdiffusion"])
    text = render_markdown(runs)                      # or render_html(runs), render_json(runs)

Each metric column carries an arrow (↑ higher is better, ↓ lower is better); cells show the mean and
its bootstrap 95% interval; the best mean of a column is bold. Columns no run could compute (weights
not configured, no applicable sample) are left out and named below the table with the reason.
Runs scored on different samples (their dataset fingerprints differ) or with different metric
models are flagged, since their numbers do not compare.

The HTML grid shows the same samples across runs (common to all of them, one edit type after another):
the source with the referred object outlined (when the dataset can be read), then each run's output.
Images are embedded as base64 PNGs, or written into `image_dir` and linked.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refcoco_edit.errors import InputError

logger = logging.getLogger(__name__)

LEADERBOARD_SCHEMA = "rie-bench/leaderboard/v1"
FORMATS = ("md", "html", "json")
UP, DOWN = "↑", "↓"
DEFAULT_GRID = 4
DEFAULT_THUMB = 256


@dataclass
class RunEntry:
    """One run folder and its results.json."""

    folder: Path
    results: dict[str, Any]
    _rows: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        method = self.results.get("method") or {}
        return str(method.get("label") or method.get("name") or self.folder.name)

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.results.get("metrics") or {}

    @property
    def fingerprint(self) -> str | None:
        return (self.results.get("dataset") or {}).get("fingerprint")

    def rows(self) -> list[dict[str, Any]]:
        """samples.jsonl rows (empty when the file is missing)."""
        if self._rows is None:
            from benchmark.run.folder import SAMPLES, read_jsonl

            self._rows = read_jsonl(self.folder / SAMPLES)
        return self._rows

    def output_path(self, row: dict[str, Any]) -> Path | None:
        """The output file of a samples.jsonl row (also when the run folder was moved)."""
        from benchmark.run.folder import OUTPUTS, output_name

        recorded = Path(str(row.get("output", "")))
        for path in (recorded, self.folder / OUTPUTS / recorded.name,
                     self.folder / OUTPUTS / f"{output_name(str(row.get('sample_id')))}.png"):
            if str(path) and path.is_file():
                return path
        return None


def load_runs(paths: Sequence[Path | str]) -> list[RunEntry]:
    from benchmark.run.folder import iter_results

    if not paths:
        raise InputError("no run folder given")
    runs = [RunEntry(folder, data) for folder, data in iter_results(paths)]
    # repeated labels get the folder's name, then a number, so that rows and grid columns can be told apart
    for suffix in (lambda i, r: f" [{r.folder.name}]", lambda i, r: f" #{i + 1}"):
        labels = [r.label for r in runs]
        for i, run in enumerate(runs):
            if labels.count(labels[i]) > 1:
                run.results.setdefault("method", {})["label"] = labels[i] + suffix(i, run)
    return runs


# --------------------------------------------------------------------------------------------
# numbers


def format_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 or magnitude < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


def format_ci(ci: Sequence[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f"[{format_value(ci[0])}, {format_value(ci[1])}]"


def columns(runs: Sequence[RunEntry]) -> tuple[list[tuple[str, bool]], dict[str, str]]:
    """([(metric, higher_is_better)] some run computed, in results order; {metric: why none could})."""
    order: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    for run in runs:
        for name, result in run.metrics.items():
            order.setdefault(name, bool(result.get("higher_is_better", True)))
            if not result.get("available", True) and result.get("reason"):
                reasons.setdefault(name, str(result["reason"]))
    shown = [(n, hib) for n, hib in order.items()
             if any(r.metrics.get(n, {}).get("available", True) and r.metrics.get(n, {}).get("value") is not None
                    for r in runs)]
    dropped = {n: reasons.get(n, "no value") for n in order if n not in dict(shown)}
    return shown, dropped


def best_runs(runs: Sequence[RunEntry], cols: Sequence[tuple[str, bool]]) -> dict[str, list[int]]:
    """{metric: indices of the runs with the best mean} (ties all count)."""
    best: dict[str, list[int]] = {}
    for name, higher in cols:
        values = [(i, r.metrics.get(name, {}).get("value")) for i, r in enumerate(runs)
                  if r.metrics.get(name, {}).get("available", True)]
        values = [(i, v) for i, v in values if v is not None]
        if not values:
            continue
        top = max(v for _, v in values) if higher else min(v for _, v in values)
        best[name] = [i for i, v in values if v == top]
    return best


def warnings_for(runs: Sequence[RunEntry]) -> list[str]:
    """Why the runs' numbers may not compare."""
    out = []
    fps = {r.label: r.fingerprint for r in runs}
    if len(set(fps.values())) > 1:
        out.append("runs were scored on different samples (dataset fingerprints differ: "
                   + ", ".join(f"{k} {str(v)[:12]}" for k, v in fps.items()) + ")")
    for key in ("clip_model", "aesthetic_model", "aesthetic_clip_model"):
        seen = {r.label: (r.results.get("metrics_config") or {}).get(key) for r in runs}
        if len(set(seen.values())) > 1:
            out.append(f"runs used different {key} settings: " + ", ".join(f"{k} {v}" for k, v in seen.items()))
    return out


def _header(name: str, higher: bool) -> str:
    return f"{name} {UP if higher else DOWN}"


# --------------------------------------------------------------------------------------------
# text tables


def format_results_table(results: dict[str, Any]) -> str:
    """A plain-text table of one results.json (what `rie-bench run` and `score` print)."""
    method = results.get("method") or {}
    ds = results.get("dataset") or {}
    lines = [f"{method.get('label') or method.get('name')}: {ds.get('samples')} samples of {ds.get('source')}"
             + (f" (split {ds['split']})" if ds.get("split") else "")]
    metrics = results.get("metrics") or {}
    width = max([len(_header(n, True)) for n in metrics] + [6])
    lines.append(f"{'metric':<{width}}  {'value':>10}  {'95% CI':<24}  {'n':>5}")
    for name, r in metrics.items():
        head = _header(name, bool(r.get("higher_is_better", True)))
        if not r.get("available", True) or r.get("value") is None:
            lines.append(f"{head:<{width}}  {'n/a':>10}  {r.get('reason') or ''}")
            continue
        lines.append(f"{head:<{width}}  {format_value(r['value']):>10}  {format_ci(r.get('ci')):<24}  {r.get('n', 0):>5}")
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(runs: Sequence[RunEntry], *, grid_image: str | None = None,
                    grid_ids: Sequence[str] | None = None) -> str:
    """The leaderboard as Markdown: the main table, notes, then one table per edit type."""
    cols, dropped = columns(runs)
    best = best_runs(runs, cols)
    out = ["# RefCOCO-Edit leaderboard", ""]
    out.append("| method | n | " + " | ".join(_header(n, h) for n, h in cols) + " |")
    out.append("|---|---:|" + "---|" * len(cols))
    for i, run in enumerate(runs):
        cells = []
        for name, _ in cols:
            r = run.metrics.get(name)
            if not r or not r.get("available", True) or r.get("value") is None:
                cells.append("n/a")
                continue
            value = format_value(r["value"])
            value = f"**{value}**" if i in best.get(name, []) else value
            ci = format_ci(r.get("ci"))
            cells.append(f"{value} {ci}".strip())
        n = (run.results.get("dataset") or {}).get("samples", "")
        out.append(f"| {_md_escape(run.label)} | {n} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"{UP} higher is better, {DOWN} lower is better; mean [bootstrap 95% CI]; best mean in bold.")
    for name, reason in dropped.items():
        out.append(f"- `{name}` not shown: {_md_escape(reason)}")
    for warning in warnings_for(runs):
        out.append(f"- **warning**: {_md_escape(warning)}")
    groups = _groups(runs, "by_edit_type")
    if groups:
        out += ["", "## By edit type", ""]
        out.append("| edit type | method | " + " | ".join(_header(n, h) for n, h in cols) + " |")
        out.append("|---|---|" + "---|" * len(cols))
        for group in groups:
            for run in runs:
                cells = [format_value(((run.metrics.get(n) or {}).get("by_edit_type") or {}).get(group, {}).get("value"))
                         for n, _ in cols]
                out.append(f"| {group} | {_md_escape(run.label)} | " + " | ".join(cells) + " |")
    if grid_image:
        out += ["", "## Samples", "", f"![samples across methods]({grid_image})", ""]
        for k, sid in enumerate(grid_ids or [], 1):
            out.append(f"{k}. `{sid}`")
    return "\n".join(out) + "\n"


def _groups(runs: Sequence[RunEntry], key: str) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        for result in run.metrics.values():
            for group in (result.get(key) or {}):
                seen.setdefault(group, None)
    return sorted(seen)


# --------------------------------------------------------------------------------------------
# JSON


def leaderboard_dict(runs: Sequence[RunEntry]) -> dict[str, Any]:
    cols, dropped = columns(runs)
    best = best_runs(runs, cols)
    return {
        "schema": LEADERBOARD_SCHEMA,
        "columns": [{"name": n, "higher_is_better": h} for n, h in cols],
        "not_shown": dropped,
        "runs": [{"label": r.label, "method": (r.results.get("method") or {}).get("name"), "folder": str(r.folder),
                  "fingerprint": r.fingerprint, "samples": (r.results.get("dataset") or {}).get("samples"),
                  "metrics": {n: {k: r.metrics.get(n, {}).get(k) for k in ("value", "ci", "n", "available", "reason")}
                              for n, _ in cols},
                  "by_edit_type": {n: (r.metrics.get(n) or {}).get("by_edit_type", {}) for n, _ in cols}}
                 for r in runs],
        "best": {n: [runs[i].label for i in idx] for n, idx in best.items()},
        "warnings": warnings_for(runs),
    }


def render_json(runs: Sequence[RunEntry]) -> str:
    return json.dumps(leaderboard_dict(runs), ensure_ascii=False, indent=1) + "\n"


# --------------------------------------------------------------------------------------------
# image grid


def choose_grid_samples(runs: Sequence[RunEntry], k: int = DEFAULT_GRID) -> list[str]:
    """Up to `k` sample ids whose outputs every run has, taking the edit types in turn (first run's order)."""
    if k <= 0 or not runs:
        return []
    have = []
    for run in runs:
        have.append({str(r["sample_id"]) for r in run.rows() if run.output_path(r) is not None})
    common = set.intersection(*have) if have else set()
    by_type: dict[str, list[str]] = {}
    for row in runs[0].rows():
        sid = str(row["sample_id"])
        if sid in common:
            by_type.setdefault(str(row.get("edit_type", "")), []).append(sid)
    chosen: list[str] = []
    queues = list(by_type.values())
    while len(chosen) < k and any(queues):
        for queue in queues:
            if queue and len(chosen) < k:
                chosen.append(queue.pop(0))
    return chosen


def _source_images(runs: Sequence[RunEntry], ids: Sequence[str], dataset: str | None) -> dict[str, Any]:
    """sample id -> the source with the referred object outlined, from the dataset when it can be read."""
    from refcoco_edit.imaging.viz import overlay_mask

    source = dataset or (runs[0].results.get("dataset") or {}).get("source")
    if not source:
        return {}
    try:
        from benchmark.run.dataset import open_selection

        selection = open_selection(str(source))
    except Exception as exc:  # noqa: BLE001 - the grid is shown without sources, with a note
        logger.warning("sources for the grid not shown: dataset %s cannot be read (%s)", source, exc)
        return {}
    where = {sid: i for i, sid in enumerate(selection.ids)}
    images = {}
    for sid in ids:
        if sid in where:
            sample = selection.sample(where[sid])
            images[sid] = overlay_mask(sample.source_image, sample.source_mask)
    return images


def _thumb(image: Any, size: int) -> Any:
    from PIL import Image

    image = image.convert("RGB")
    if max(image.size) > size:
        image = image.copy()
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def grid_cells(runs: Sequence[RunEntry], ids: Sequence[str], *, dataset: str | None = None,
               thumb: int = DEFAULT_THUMB) -> tuple[list[str], list[tuple[str, str, list[Any]]]]:
    """(column labels, [(sample id, prompt, [images or None])]): the source column first when available."""
    from PIL import Image

    sources = _source_images(runs, ids, dataset)
    labels = (["source"] if sources else []) + [r.label for r in runs]
    index = [{str(row["sample_id"]): row for row in run.rows()} for run in runs]
    rows = []
    for sid in ids:
        first = index[0].get(sid, {})
        prompt = str(first.get("prompt", ""))
        edit_type = str(first.get("edit_type", ""))
        images: list[Any] = [_thumb(sources[sid], thumb) if sid in sources else None] if sources else []
        for run, rows_by_id in zip(runs, index):
            path = run.output_path(rows_by_id[sid]) if sid in rows_by_id else None
            if path is None:
                images.append(None)
                continue
            with Image.open(path) as im:
                images.append(_thumb(im, thumb))
        rows.append((sid, f"{prompt} ({edit_type})" if edit_type else prompt, images))
    return labels, rows


def _png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def render_grid_png(runs: Sequence[RunEntry], ids: Sequence[str], *, dataset: str | None = None,
                    thumb: int = DEFAULT_THUMB) -> Any:
    """The grid as one PIL image (rows: samples, columns: source then runs)."""
    from refcoco_edit.imaging.viz import image_grid

    labels, rows = grid_cells(runs, ids, dataset=dataset, thumb=thumb)
    return image_grid([images for _, _, images in rows], col_labels=labels, cell=thumb)


# --------------------------------------------------------------------------------------------
# HTML

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
                 + "".join(f"<th>{esc(_header(n, h))}</th>" for n, h in cols) + "</tr></thead><tbody>")
    for i, run in enumerate(runs):
        cells = []
        for name, _ in cols:
            r = run.metrics.get(name)
            if not r or not r.get("available", True) or r.get("value") is None:
                reason = esc(str((r or {}).get("reason") or "not computed"))
                cells.append(f"<td title='{reason}'>n/a</td>")
                continue
            cls = " class='best'" if i in best.get(name, []) else ""
            cells.append(f"<td{cls}>{esc(format_value(r['value']))}<span class='ci'>{esc(format_ci(r.get('ci')))}</span></td>")
        n = (run.results.get("dataset") or {}).get("samples", "")
        parts.append(f"<tr><td>{esc(run.label)}</td><td>{esc(str(n))}</td>{''.join(cells)}</tr>")
    parts.append("</tbody></table>")
    parts.append(f"<p class='note'>{UP} higher is better, {DOWN} lower is better; mean with its bootstrap 95% "
                 "confidence interval; best mean highlighted.</p>")
    for name, reason in dropped.items():
        parts.append(f"<p class='note'><code>{esc(name)}</code> not shown: {esc(reason)}</p>")
    for warning in warnings_for(runs):
        parts.append(f"<p class='warning'>warning: {esc(warning)}</p>")
    groups = _groups(runs, "by_edit_type")
    if groups:
        parts.append("<h2>By edit type</h2><table><thead><tr><th>edit type</th><th>method</th>"
                     + "".join(f"<th>{esc(_header(n, h))}</th>" for n, h in cols) + "</tr></thead><tbody>")
        for group in groups:
            for run in runs:
                cells = "".join(
                    f"<td>{esc(format_value(((run.metrics.get(n) or {}).get('by_edit_type') or {}).get(group, {}).get('value')))}</td>"
                    for n, _ in cols)
                parts.append(f"<tr><td>{esc(group)}</td><td>{esc(run.label)}</td>{cells}</tr>")
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


def _image_src(image: Any, image_dir: Path | None, html_path: Path | None, name: str) -> str:
    data = _png_bytes(image)
    if image_dir is None:
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    image_dir.mkdir(parents=True, exist_ok=True)
    (image_dir / name).write_bytes(data)
    target = image_dir / name
    if html_path is not None:
        import os

        return Path(os.path.relpath(target.absolute(), html_path.absolute().parent)).as_posix()
    return target.as_posix()
