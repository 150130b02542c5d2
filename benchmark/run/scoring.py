"""Scoring outputs: which metrics with which models (`ScoreConfig`), per-sample rows, and the results
block with its per-edit-type and per-pipeline tables.

Scoring keeps one row per sample (its values for every metric output), so that the summary (means,
bootstrap CIs, group tables) can be computed again from gathered rows without loading any model:
that is how shards merge into the numbers of a single-process run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.run.progress import sample_bar
from refcoco_edit.imaging.files import open_image

if TYPE_CHECKING:
    from PIL import Image

    from benchmark.metrics import Metric, MetricInput
    from benchmark.run.dataset import Selection
    from refcoco_edit.schema import Sample

DEFAULT_CLIP = "clip-vit-l14"
DEFAULT_AESTHETIC = "aesthetic"


@dataclass
class ScoreConfig:
    """How outputs are scored (shared by `run` and `score`)."""

    metrics: str | list[str] | None = None  # None: every metric (unavailable ones are reported)
    clip_model: str = DEFAULT_CLIP
    aesthetic_model: str = DEFAULT_AESTHETIC
    aesthetic_clip_model: str | None = None  # None: the head's own config, else CLIP ViT-L/14
    model_overrides: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    batch_size: int = 16
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    progress: bool = True


def build_metrics(config: ScoreConfig) -> dict[str, Metric]:
    """{metric name: Metric} for the config: CLIP metrics get `clip_model`, the aesthetic metric its head
    (and `aesthetic_clip_model` when set); nothing is loaded yet."""
    from benchmark.metrics import create_metric, parse_metric_list

    common = {"overrides": config.model_overrides, "device": config.device, "batch_size": config.batch_size,
              "n_resamples": config.bootstrap, "seed": config.bootstrap_seed}
    metrics = {}
    for name in parse_metric_list(config.metrics):
        options = dict(common)
        if name == "aesthetic":
            options.update(aesthetic_model=config.aesthetic_model, clip_model=config.aesthetic_clip_model)
        else:
            options["clip_model"] = config.clip_model
        metrics[name] = create_metric(name, **options)
    return metrics


def metrics_config(config: ScoreConfig) -> dict[str, Any]:
    """The scoring settings a results file records (and a run's shard token covers)."""
    from benchmark.metrics import parse_metric_list

    return {"metrics": parse_metric_list(config.metrics), "clip_model": config.clip_model,
            "aesthetic_model": config.aesthetic_model, "aesthetic_clip_model": config.aesthetic_clip_model,
            "bootstrap": config.bootstrap, "bootstrap_seed": config.bootstrap_seed, "confidence": 0.95}


def _metric_input(sample: Sample, output: Image.Image) -> MetricInput:
    from benchmark.metrics import MetricInput

    return MetricInput(output=output, source=sample.source_image, edit_mask=sample.edit_mask,
                       source_mask=sample.source_mask, prompt=sample.prompt, edit_text=sample.edit_text,
                       referring_text=sample.referring_text, target_caption=None, edit_type=sample.edit_type,
                       pipeline=sample.pipeline, sample_id=sample.sample_id, reference=sample.edited_image)


def score_samples(selection: Selection, indices: Sequence[int], output_path: Callable[[str], Path],
                  metrics: Mapping[str, Metric], *, batch_size: int = 16, progress: bool = False,
                  extra: Callable[[int, Sample], dict[str, Any]] | None = None) -> tuple[list[dict], dict[str, str]]:
    """Score the outputs of `indices`: rows (index, sample_id, split, edit_type, pipeline, prompt, output,
    each metric output's value, plus `extra(index, sample)`) and {metric: reason} of those unavailable.

    Each output is opened through `open_image` (the pixel limit; a clear error naming the sample)."""
    rows: list[dict[str, Any]] = []
    bar = sample_bar(len(indices), "score", progress)
    for start in range(0, len(indices), batch_size):
        chunk = list(indices[start:start + batch_size])
        samples = [selection.sample(i) for i in chunk]
        inputs = []
        for sample in samples:
            path = output_path(sample.sample_id)
            output = open_image(path, what=f"output of sample {sample.sample_id} ({path})", mode="RGB")
            inputs.append(_metric_input(sample, output))
        values: dict[str, list[Any]] = {}
        for metric in metrics.values():
            values.update(metric.update(inputs))
        for j, (index, sample) in enumerate(zip(chunk, samples, strict=True)):
            row: dict[str, Any] = {"index": index, "sample_id": sample.sample_id, "split": sample.split,
                                   "edit_type": sample.edit_type, "pipeline": sample.pipeline, "prompt": sample.prompt,
                                   "output": str(output_path(sample.sample_id))}
            if extra is not None:
                row.update(extra(index, sample))
            for out, vals in values.items():
                row[out] = vals[j]
            rows.append(row)
        bar.update(len(chunk))
    bar.close()
    unavailable = {name: m.availability() or "unavailable" for name, m in metrics.items() if not m.available}
    return rows, unavailable


def summarize_rows(rows: Sequence[Mapping[str, Any]], config: ScoreConfig,
                   unavailable: Mapping[str, str]) -> dict[str, Any]:
    """The results block {output: result dict} from per-sample rows (no model is loaded)."""
    from benchmark.metrics import MetricResult, results_to_dict

    results: dict[str, Any] = {}
    for name, metric in build_metrics(config).items():
        if name in unavailable:
            for out in metric.output_names():
                results[out] = MetricResult(out, metric.higher_is_better, available=False, reason=unavailable[name],
                                            version=metric.version)
            continue
        metric.record(rows)
        results.update(metric.compute())
    return results_to_dict(results)


def pivot_tables(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{"by_edit_type": {group: {metric: {value, ci, n}}}, "by_pipeline": {...}} from the results block."""
    tables: dict[str, dict[str, dict[str, Any]]] = {"by_edit_type": {}, "by_pipeline": {}}
    for name, result in metrics.items():
        for key in tables:
            for group, cell in (result.get(key) or {}).items():
                tables[key].setdefault(group, {})[name] = cell
    return tables
