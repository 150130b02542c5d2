"""Metrics of the referring-image-editing benchmark.

    from benchmark.metrics import MetricInput, create_metrics, results_to_dict

    metrics = create_metrics("l2_bg,localisation,clip_sim_fg", clip_model="tiny-clip")
    for batch in batches:                       # lists of MetricInput
        for metric in metrics.values():
            metric.update(batch)                # returns the batch's per-sample values
    results = {}
    for metric in metrics.values():
        results.update(metric.compute())        # {output name: MetricResult}
    json.dumps(results_to_dict(results))        # the results schema (see MetricResult.to_dict)

Importing this package loads numpy and Pillow only; torch and transformers are imported when a
metric first scores.
"""

from benchmark.metrics.base import Metric, MetricInput
from benchmark.metrics.registry import (
    canonical_name,
    create_metric,
    create_metrics,
    get_metric_class,
    metric_names,
    parse_metric_list,
)
from benchmark.metrics.result import MetricResult, results_to_dict
from benchmark.metrics.stats import bootstrap_ci, summarize

__all__ = [
    "Metric",
    "MetricInput",
    "MetricResult",
    "bootstrap_ci",
    "canonical_name",
    "create_metric",
    "create_metrics",
    "get_metric_class",
    "metric_names",
    "parse_metric_list",
    "results_to_dict",
    "summarize",
]
