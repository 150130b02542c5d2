"""Metric names -> classes, imported only when a metric is asked for.

`rie-bench list`, `--metrics a,b` and the runner go through here. A name is either a metric
(`localisation`) or one of its outputs (`loc_iou`), which selects the metric that produces it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from benchmark.metrics.base import Metric
from refcoco_edit.registry import Registry


def _is_metric(obj: Any) -> str | None:
    return None if isinstance(obj, type) and issubclass(obj, Metric) else "is not a benchmark Metric subclass"


# name -> "module:Class". Order = the order of result tables (the paper's three first).
METRICS: Registry[type[Metric]] = Registry("metric", {
    "aesthetic": "benchmark.metrics.aesthetic:AestheticScore",
    "l2_bg": "benchmark.metrics.background:L2Background",
    "clip_sim_fg": "benchmark.metrics.clip_metrics:ClipSimForeground",
    "psnr_bg": "benchmark.metrics.background:PSNRBackground",
    "ssim_bg": "benchmark.metrics.background:SSIMBackground",
    "clip_t": "benchmark.metrics.clip_metrics:ClipText",
    "localisation": "benchmark.metrics.localisation:Localisation",
    "fg_agreement": "benchmark.metrics.foreground:ForegroundAgreement",
}, check=_is_metric)

# Output names that differ from their metric's name (kept here so that no import is needed).
OUTPUT_OF: dict[str, str] = {
    "clip_sim_fg_ref": "clip_sim_fg",
    "loc_precision": "localisation",
    "loc_recall": "localisation",
    "loc_iou": "localisation",
    "psnr_fg": "fg_agreement",
}


def metric_names() -> list[str]:
    return METRICS.names()


def canonical_name(name: str) -> str:
    """The metric that `name` (a metric or one of its outputs) refers to."""
    name = name.strip()
    if name in METRICS:
        return name
    if name in OUTPUT_OF:
        return OUTPUT_OF[name]
    # the hint and the list of known names cover the output names too
    raise Registry("metric", {**METRICS, **OUTPUT_OF}).unknown(name)


def get_metric_class(name: str) -> type[Metric]:
    return METRICS.load(canonical_name(name))


def create_metric(name: str, **options: Any) -> Metric:
    """An instance of metric `name`; options the class does not take are ignored, so that shared
    options (overrides, device, seed) can be passed to every metric alike."""
    cls = get_metric_class(name)
    accepted: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            accepted |= {p.name for p in inspect.signature(init).parameters.values() if p.kind == p.KEYWORD_ONLY}
    return cls(**{k: v for k, v in options.items() if k in accepted})


def parse_metric_list(spec: str | Iterable[str] | None) -> list[str]:
    """"a,b" or ["a", "b"] -> canonical metric names without repeats; None or "all" -> every metric."""
    if spec is None:
        return metric_names()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip() for s in items if s.strip()]
    if not items or items == ["all"]:
        return metric_names()
    return list(dict.fromkeys(canonical_name(s) for s in items))


def create_metrics(spec: str | Iterable[str] | None = None, **options: Any) -> dict[str, Metric]:
    """{metric name: instance} for a metric list (see `parse_metric_list`)."""
    return {name: create_metric(name, **options) for name in parse_metric_list(spec)}
