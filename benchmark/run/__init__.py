"""The benchmark runner in parts: the run folder, the dataset selection, provenance, sharding,
generation, scoring, and the two entry points (`runner.run_benchmark`, `runner.score_predictions`)
that put them together. See `benchmark.run.runner` for how a run works."""
