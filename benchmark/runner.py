"""The benchmark's entry points under their established name; the runner itself lives in
`benchmark.run` (folder layout, dataset, generation, sharding, scoring, provenance)."""

from benchmark.run.runner import RunConfig, RunSummary, run_benchmark, score_predictions
from benchmark.run.scoring import ScoreConfig

__all__ = ["RunConfig", "RunSummary", "ScoreConfig", "run_benchmark", "score_predictions"]
