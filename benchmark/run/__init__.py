"""The benchmark runner in parts: the run folder, the dataset selection, provenance, sharding,
generation, scoring, submission checks, and the two entry points that put them together
(`runner.run_benchmark`, `runner.score_predictions`; see that module for how a run works)."""
