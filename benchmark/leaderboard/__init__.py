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

Parts: `runs` (reading run folders), `table` (columns, best marks, warnings, the JSON data), `text`
(plain text, Markdown, JSON), `grid` (the image grid), `page` (HTML).
"""

from benchmark.leaderboard.grid import DEFAULT_GRID, DEFAULT_THUMB, choose_grid_samples, grid_cells, render_grid_png
from benchmark.leaderboard.page import render_html
from benchmark.leaderboard.runs import RunEntry, load_runs
from benchmark.leaderboard.table import (
    DOWN,
    FORMATS,
    LEADERBOARD_SCHEMA,
    UP,
    best_runs,
    columns,
    format_ci,
    format_value,
    leaderboard_dict,
    warnings_for,
)
from benchmark.leaderboard.text import format_results_table, render_json, render_markdown

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_THUMB",
    "DOWN",
    "FORMATS",
    "LEADERBOARD_SCHEMA",
    "UP",
    "RunEntry",
    "best_runs",
    "choose_grid_samples",
    "columns",
    "format_ci",
    "format_results_table",
    "format_value",
    "grid_cells",
    "leaderboard_dict",
    "load_runs",
    "render_grid_png",
    "render_html",
    "render_json",
    "render_markdown",
    "warnings_for",
]
