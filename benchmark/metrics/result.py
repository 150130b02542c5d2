"""The summary of one metric output over a run, and its JSON form in results.json.

Its own module because both the metrics (`base.Metric.compute`) and the statistics that fill it
(`stats.summarize`) build it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class MetricResult:
    """The summary of one metric output over a run; `to_dict` is the results schema's entry.

    Schema of `to_dict()` (JSON-ready): {"value": float|None, "ci": [lo, hi] (floats or None),
    "n": int, "higher_is_better": bool, "available": bool, "reason": str|None, "version": int,
    "by_edit_type": {group: {"value", "ci", "n"}}, "by_pipeline": {group: {"value", "ci", "n"}}}.

    `version` is the metric's definition version (`Metric.version`): two results compare only when
    it is the same. A results file written before versions were recorded counts as version 1.
    """

    name: str
    higher_is_better: bool
    value: float | None = None
    ci: tuple[float | None, float | None] = (None, None)
    n: int = 0
    available: bool = True
    reason: str | None = None
    by_edit_type: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_pipeline: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "ci": [self.ci[0], self.ci[1]],
            "n": self.n,
            "higher_is_better": self.higher_is_better,
            "available": self.available,
            "reason": self.reason,
            "version": self.version,
            "by_edit_type": self.by_edit_type,
            "by_pipeline": self.by_pipeline,
        }


def results_to_dict(results: Mapping[str, MetricResult]) -> dict[str, dict[str, Any]]:
    """{name: result.to_dict()}: the `metrics` block of results.json."""
    return {name: result.to_dict() for name, result in results.items()}
