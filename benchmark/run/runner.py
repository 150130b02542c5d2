"""Run a method over RefCOCO-Edit and score it: generate -> cache per sample -> score -> results.

The two entry points, `run_benchmark` (`rie-bench run`) and `score_predictions` (`rie-bench score`),
put the parts together: the run folder (`folder`), the samples (`dataset`), resumable generation
(`generation`), processes and their score files (`sharding`), metrics (`scoring`), the checks of a
submitted folder (`submission`) and what the results record about their origin (`provenance`).

Why it is built this way:
- Resume: outputs are cached per sample in the run folder, so a killed run resumes where it stopped.
  A rerun whose method, model, options, steps, size or seed differ from run.json is refused
  (`overwrite=True` starts afresh) so that one folder never mixes two configurations.
- Sharding: each process generates and scores its share and writes a score file stamped with a run
  token (method config, seed, dataset fingerprint, scoring settings); the results are computed once,
  from all gathered rows in dataset order, so they equal a single-process run's.
- Contamination: when the method's model is a checkpoint folder with a training manifest, the results
  record which evaluation pictures it was trained on (`provenance.training_overlap`), with a warning
  when there are any; the leaderboard marks such runs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.run.dataset import Selection, open_selection
from benchmark.run.folder import RESULTS, RESULTS_SCHEMA, check_run_file, output_path, write_results
from benchmark.run.generation import generate_outputs, generation_log, sample_seed
from benchmark.run.provenance import environment_info, training_overlap
from benchmark.run.scoring import (
    ScoreConfig,
    build_metrics,
    metrics_config,
    pivot_tables,
    score_samples,
    summarize_rows,
)
from benchmark.run.sharding import process_layout, read_shards, write_shard
from benchmark.run.submission import SubmissionError, prediction_folder, validate_submission
from refcoco_edit.errors import InputError
from refcoco_edit.io import dumps

if TYPE_CHECKING:
    from benchmark.methods.base import Method
    from refcoco_edit.schema import Sample

logger = logging.getLogger(__name__)


@dataclass
class RunConfig(ScoreConfig):
    """One `rie-bench run`."""

    method: str = ""
    dataset: str = ""
    out: Path = Path()
    split: str | None = None
    limit: int | None = None
    seed: int = 0
    method_model: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    size: int | None = None
    dtype: str | None = None
    label: str | None = None
    overwrite: bool = False
    shard: tuple[int, int] | None = None

    def check(self) -> RunConfig:
        if not self.method:
            raise InputError("no method given (--method)")
        if not self.dataset:
            raise InputError("no dataset given (--dataset PATH_OR_HUB_ID or 'sample')")
        for name, value, low in (("--limit", self.limit, 1), ("--steps", self.steps, 1), ("--size", self.size, 8),
                                 ("--seed", self.seed, 0), ("--batch-size", self.batch_size, 1)):
            if value is not None and int(value) < low:
                raise InputError(f"{name} must be at least {low}, got {value}")
        if self.shard is not None:
            i, n = self.shard
            if not (n >= 1 and 0 <= i < n):
                raise InputError(f"--shard I/N needs 0 <= I < N, got {i}/{n}")
        return self


@dataclass
class RunSummary:
    """What a call did; `results` is the results.json content (None on a process that did not merge)."""

    out: Path
    results: dict[str, Any] | None
    generated: int = 0
    cached: int = 0
    scored: int = 0
    seconds: float = 0.0


def _results_record(*, kind: str, method: dict[str, Any], config: dict[str, Any], selection: Selection,
                    fingerprint: str, metrics: dict[str, Any], timing: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    record = {
        "schema": RESULTS_SCHEMA,
        "kind": kind,
        "method": method,
        "config": config,
        "dataset": {"source": selection.source, "split": selection.split, "samples": len(selection),
                    "fingerprint": fingerprint,
                    "splits": {s: selection.splits.count(s) for s in dict.fromkeys(selection.splits)}},
        "environment": environment_info(),
        "metrics": metrics,
        "tables": pivot_tables(metrics),
        "timing": timing,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    record.update(extra or {})
    return record


def run_benchmark(config: RunConfig, *, method: Method | None = None) -> RunSummary:
    """`rie-bench run`: generate (resumably), score, gather, write results; see the module docstring.

    `method` may be given already made (tests); by default it is created from the config.
    """
    from benchmark.methods import create_method

    config.check()
    start = time.perf_counter()
    layout = process_layout(config.shard)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = config.device or layout.device
    if method is None:
        method = create_method(config.method, model=config.method_model, overrides=config.model_overrides,
                               device=device, dtype=config.dtype, steps=config.steps, size=config.size,
                               **config.method_options)
    method_config = method.config()
    with layout.main_first():  # the main process builds `sample` and settles run.json first
        selection = open_selection(config.dataset, config.split, config.limit, progress=config.progress)
        check_run_file(out, {"method": method_config, "seed": config.seed, "dataset": selection.source},
                       config.overwrite, is_main=layout.is_main, option_defaults=type(method).option_defaults)
    fingerprint = selection.fingerprint()

    indices = layout.indices(len(selection))
    generated, cached = generate_outputs(method, selection, indices, out, run_seed=config.seed,
                                         log_name=f"shard-{layout.index:03d}-of-{layout.count:03d}",
                                         progress=config.progress)
    gen_seconds = time.perf_counter() - start

    score_config = ScoreConfig(**{k: getattr(config, k) for k in ScoreConfig.__dataclass_fields__})
    score_config.device = device
    token = hashlib.sha256(dumps([method_config, config.seed, fingerprint, metrics_config(score_config)],
                                 sort_keys=True).encode()).hexdigest()[:16]
    log = generation_log(out)

    def extra(index: int, sample: Sample) -> dict[str, Any]:
        rec = log.get(sample.sample_id, {})
        return {"seed": sample_seed(config.seed, sample.sample_id), "generation": rec.get("info", {}),
                "seconds": rec.get("seconds")}

    t0 = time.perf_counter()
    rows, unavailable = score_samples(selection, indices, lambda sid: output_path(out, sid),
                                      build_metrics(score_config), batch_size=config.batch_size,
                                      progress=config.progress, extra=extra)
    write_shard(out, layout, token, rows, unavailable, time.perf_counter() - t0)
    summary = RunSummary(out=out, results=None, generated=generated, cached=cached, scored=len(rows))
    if layout.barrier is not None:
        layout.barrier()
        if not layout.is_main:
            summary.seconds = time.perf_counter() - start
            return summary
    gathered = read_shards(out, layout.count, token)
    if gathered is None:  # shards by hand: another process merges when the last one is done
        logger.info("shard %d/%d done; the last shard to finish writes %s", layout.index, layout.count, RESULTS)
        summary.seconds = time.perf_counter() - start
        return summary
    all_rows, all_unavailable, score_seconds = gathered
    all_rows.sort(key=lambda r: r["index"])  # dataset order: the bootstrap must not depend on the sharding
    contamination = training_overlap(method_config, selection, method_config.get("size"))
    _warn_contamination(contamination)
    metrics = summarize_rows(all_rows, score_config, all_unavailable)
    seconds = [r["seconds"] for r in all_rows if isinstance(r.get("seconds"), (int, float))]
    run_config = {k: v for k, v in asdict(config).items() if k not in ("model_overrides", "out", "progress")}
    run_config.update(out=str(out), model_overrides=dict(config.model_overrides),
                      metrics=metrics_config(score_config)["metrics"], processes=layout.count)
    record = _results_record(
        kind="run",
        method={"name": method.name, "label": config.label or method.label(), "config": method_config},
        config=run_config, selection=selection, fingerprint=fingerprint, metrics=metrics,
        timing={"generation_seconds_per_sample": (sum(seconds) / len(seconds)) if seconds else None,
                "generation_seconds_total": sum(seconds), "scoring_seconds": score_seconds,
                "wall_seconds_this_call": time.perf_counter() - start, "generated_this_call": generated,
                "cached_this_call": cached},
        extra={"seeds": {"run_seed": config.seed,
                         "per_sample": "int(sha256(f'{run_seed}:{sample_id}')[:4 bytes]) >> 1, in samples.jsonl"},
               "metrics_config": metrics_config(score_config),
               **({"contamination": contamination} if contamination is not None else {})},
    )
    write_results(out, record, all_rows)
    summary.results = record
    summary.seconds = time.perf_counter() - start
    logger.info("generation %.1f s, all %.1f s", gen_seconds, summary.seconds)
    return summary


def _warn_contamination(record: dict[str, Any] | None) -> None:
    if not record or not record.get("checked"):
        return
    if record["count"]:
        ids = record["image_ids"]
        shown = ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        logger.warning("the model was trained on %d of the %d evaluation pictures (%d samples; image ids %s): "
                       "its scores are not a held-out evaluation", record["count"], record["evaluation_pictures"],
                       record["samples"], shown)
    protocol = record.get("protocol") or {}
    if not protocol.get("same", True):
        logger.warning("the model was trained at %s but is evaluated at %s (longer side, aspect kept)",
                       protocol.get("trained"), protocol.get("evaluated"))


def score_predictions(pred: Path | str, dataset: str, *, out: Path | str | None = None, split: str | None = None,
                      limit: int | None = None, label: str | None = None,
                      config: ScoreConfig | None = None) -> RunSummary:
    """`rie-bench score`: validate a folder of outputs named by sample id, score it, write results.json and
    samples.jsonl (into `out`, by default the folder itself). Raises `SubmissionError` naming every
    problem when the submission is not valid."""
    config = config or ScoreConfig()
    start = time.perf_counter()
    pred_dir = prediction_folder(Path(pred))
    if out is None and pred_dir != Path(pred) and (Path(pred) / RESULTS).is_file():
        raise InputError(f"{pred} is a run folder that already holds its {RESULTS}; pass --out DIR for the scores")
    selection = open_selection(dataset, split, limit, progress=config.progress)
    report = validate_submission(pred_dir, selection.source_sizes())
    if not report.ok:
        raise SubmissionError(report)
    out_dir = Path(out) if out is not None else (pred_dir.parent if pred_dir != Path(pred) else pred_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = selection.fingerprint()
    t0 = time.perf_counter()
    rows, unavailable = score_samples(selection, list(range(len(selection))), lambda sid: report.files[sid],
                                      build_metrics(config), batch_size=config.batch_size, progress=config.progress)
    score_seconds = time.perf_counter() - t0
    metrics = summarize_rows(rows, config, unavailable)
    name = label or (pred_dir.parent.name if pred_dir != Path(pred) else pred_dir.name)
    run_config = {"pred": str(pred_dir), "dataset": dataset, "split": split, "limit": limit,
                  "model_overrides": dict(config.model_overrides), **metrics_config(config)}
    record = _results_record(
        kind="score", method={"name": "submission", "label": name, "config": {"pred": str(pred_dir)}},
        config=run_config, selection=selection, fingerprint=fingerprint, metrics=metrics,
        timing={"scoring_seconds": score_seconds, "wall_seconds_this_call": time.perf_counter() - start},
        extra={"validation": report.summary(), "metrics_config": metrics_config(config)},
    )
    write_results(out_dir, record, rows)
    return RunSummary(out=out_dir, results=record, scored=len(rows), seconds=time.perf_counter() - start)
