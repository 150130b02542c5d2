"""What every leaderboard rendering shows: the columns, the cell values, the best marks, the warnings
about runs that do not compare, the mark of runs whose model was trained on evaluation pictures, and
the whole board as JSON-ready data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmark.leaderboard.runs import RunEntry

LEADERBOARD_SCHEMA = "rie-bench/leaderboard/v1"
FORMATS = ("md", "html", "json")
UP, DOWN = "↑", "↓"
CELL_KEYS = ("value", "ci", "n", "available", "reason", "version")  # of each run's metric in the JSON board
CONTAMINATED = "†"  # after a run's label: its model was trained on some of the evaluation pictures


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


def header(name: str, higher: bool) -> str:
    """A column title: the metric and the arrow of its better direction."""
    return f"{name} {UP if higher else DOWN}"


def has_value(result: Mapping[str, Any] | None) -> bool:
    """True when a results entry was computed and holds a mean (else its cell reads n/a)."""
    return bool(result) and bool(result.get("available", True)) and result.get("value") is not None


def group_value(run: RunEntry, name: str, group: str, key: str = "by_edit_type") -> float | None:
    """The mean of metric `name` over one group (an edit type) of `run`, None when absent."""
    return (((run.metrics.get(name) or {}).get(key) or {}).get(group) or {}).get("value")


def columns(runs: Sequence[RunEntry]) -> tuple[list[tuple[str, bool]], dict[str, str]]:
    """([(metric, higher_is_better)] some run computed, in results order; {metric: why none could})."""
    order: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    for run in runs:
        for name, result in run.metrics.items():
            order.setdefault(name, bool(result.get("higher_is_better", True)))
            if not result.get("available", True) and result.get("reason"):
                reasons.setdefault(name, str(result["reason"]))
    shown = [(n, hib) for n, hib in order.items() if any(has_value(r.metrics.get(n)) for r in runs)]
    dropped = {n: reasons.get(n, "no value") for n in order if n not in dict(shown)}
    return shown, dropped


def best_runs(runs: Sequence[RunEntry], cols: Sequence[tuple[str, bool]]) -> dict[str, list[int]]:
    """{metric: indices of the runs with the best mean} (ties all count)."""
    best: dict[str, list[int]] = {}
    for name, higher in cols:
        values = [(i, r.metrics[name]["value"]) for i, r in enumerate(runs) if has_value(r.metrics.get(name))]
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
    names = dict.fromkeys(name for r in runs for name in r.metrics)
    for name in names:
        versions = {r.label: (r.metrics.get(name) or {}).get("version", 1) for r in runs if name in r.metrics}
        if len(set(versions.values())) > 1:
            out.append(f"runs scored {name} with different versions of the metric ("
                       + ", ".join(f"{k} v{v}" for k, v in versions.items())
                       + "); `rie-bench score` scores a run's outputs again with the current one")
    return out


def contamination(run: RunEntry) -> dict[str, Any] | None:
    """The run's contamination record when its model was trained on evaluation pictures, else None."""
    record = run.results.get("contamination")
    if isinstance(record, Mapping) and record.get("checked") and record.get("count"):
        return dict(record)
    return None


def marked_label(run: RunEntry) -> str:
    """The run's label, followed by `CONTAMINATED` when its model saw evaluation pictures."""
    return f"{run.label} {CONTAMINATED}" if contamination(run) else run.label


def contamination_note(record: Mapping[str, Any]) -> str:
    """One sentence about a contamination record (the same words in every rendering)."""
    ids = list(record.get("image_ids") or [])
    shown = ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    return (f"trained on {record.get('count')} of the {record.get('evaluation_pictures')} evaluation pictures "
            f"({record.get('samples')} samples; image ids {shown}): not a held-out result")


def contamination_notes(runs: Sequence[RunEntry]) -> list[str]:
    """"label: note" for each marked run, and for ReferDiffusion runs that could not be checked."""
    out = []
    for run in runs:
        record = contamination(run)
        if record:
            out.append(f"{CONTAMINATED} {run.label}: {contamination_note(record)}")
        elif (run.results.get("contamination") or {}).get("checked") is False:
            out.append(f"{run.label}: not checked for training on evaluation pictures "
                       f"({run.results['contamination'].get('reason')})")
    return out


def groups(runs: Sequence[RunEntry], key: str = "by_edit_type") -> list[str]:
    """The group names (edit types) any run's metrics have, sorted."""
    seen: dict[str, None] = {}
    for run in runs:
        for result in run.metrics.values():
            for group in (result.get(key) or {}):
                seen.setdefault(group, None)
    return sorted(seen)


def leaderboard_dict(runs: Sequence[RunEntry]) -> dict[str, Any]:
    """The board as JSON-ready data (`render_json`'s content)."""
    cols, dropped = columns(runs)
    best = best_runs(runs, cols)
    return {
        "schema": LEADERBOARD_SCHEMA,
        "columns": [{"name": n, "higher_is_better": h} for n, h in cols],
        "not_shown": dropped,
        "runs": [{"label": r.label, "method": (r.results.get("method") or {}).get("name"), "folder": str(r.folder),
                  "contaminated": contamination(r) is not None, "contamination": r.results.get("contamination"),
                  "fingerprint": r.fingerprint, "samples": (r.results.get("dataset") or {}).get("samples"),
                  "metrics": {n: {k: r.metrics.get(n, {}).get(k) for k in CELL_KEYS} for n, _ in cols},
                  "by_edit_type": {n: (r.metrics.get(n) or {}).get("by_edit_type", {}) for n, _ in cols}}
                 for r in runs],
        "best": {n: [runs[i].label for i in idx] for n, idx in best.items()},
        "warnings": warnings_for(runs),
    }
