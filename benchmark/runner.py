"""Run a method over RefCOCO-Edit and score it: generate -> cache per sample -> score -> results.

Layout of a run folder DIR::

    DIR/run.json                       what generated the outputs (checked when a run resumes)
    DIR/outputs/<sample_id>.png        one output per sample, written atomically (temp file + rename)
    DIR/generation/<shard>.jsonl       per sample: seed, seconds, the method's notes (appended)
    DIR/shards/scores-I-of-N.jsonl     per-process scores, gathered by the main process
    DIR/results.json                   method, config, seeds, versions, git hash, dataset fingerprint,
                                       metrics with bootstrap CIs, per-edit-type / per-pipeline tables
    DIR/samples.jsonl                  one row per sample with its metric values

Why it is built this way:
- Resume: an output is written to a temporary name and renamed, so a killed run leaves either a whole
  PNG or none; a rerun skips every sample whose PNG opens, and loads the method only when something
  is left to generate. Each sample's seed comes from the run seed and its sample id
  (`sample_seed`), so a resumed, sharded or reordered run makes the same outputs as one straight run.
  A rerun whose method, model, options, steps, size or seed differ from run.json is refused
  (`overwrite=True` starts afresh) so that one folder never mixes two configurations.
- Sharding: under `accelerate launch` (WORLD_SIZE > 1), process i of n takes samples i, i+n, ...
  (also `shard=(i, n)` by hand, e.g. one machine each). Each process generates and scores its
  samples and writes its score file; the main process waits for the others and merges (by hand:
  whichever process finds all n files, stamped with the same run token, merges). Means and CIs are
  computed from the gathered per-sample values, so they equal a single-process run's.
- `--dataset sample` builds the RefShapes RefCOCO-Edit once into the cache
  (`<cache>/datasets/refshapes-edit-v1`, RefShapes ground-truth edits through the store and export
  code) and reuses it.
- Output file names are sample ids; an id with characters outside [A-Za-z0-9._-] is
  percent-encoded (`output_name`), and a submission for `rie-bench score` must use the same names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from refcoco_edit.errors import DataError, InputError

logger = logging.getLogger(__name__)

RESULTS_SCHEMA = "rie-bench/results/v1"
SAMPLE_DATASET = "sample"
SAMPLE_DATASET_DIR = "refshapes-edit-v1"
OUTPUTS = "outputs"
GENERATION = "generation"
SHARDS = "shards"
RESULTS = "results.json"
SAMPLES = "samples.jsonl"
RUN_FILE = "run.json"
DEFAULT_CLIP = "clip-vit-l14"
DEFAULT_AESTHETIC = "aesthetic"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PACKAGES = ("refcoco-edit", "torch", "diffusers", "transformers", "accelerate", "datasets", "numpy", "pillow",
             "safetensors")
# Sample fields hashed into the dataset fingerprint (images and masks as their stored bytes).
_FINGERPRINT_COLUMNS = ("sample_id", "prompt", "referring_text", "edit_text", "edit_type", "pipeline",
                        "source_image", "edited_image", "source_mask", "edit_mask")


# --------------------------------------------------------------------------------------------
# configuration


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


# --------------------------------------------------------------------------------------------
# small helpers


def sample_seed(run_seed: int, sample_id: str) -> int:
    """The generation seed of one sample: from the run seed and the sample id (order independent)."""
    return int.from_bytes(hashlib.sha256(f"{int(run_seed)}:{sample_id}".encode()).digest()[:4], "big") >> 1


def output_name(sample_id: str) -> str:
    """The file name (without .png) that holds `sample_id`'s output."""
    return sample_id if _SAFE_NAME.match(sample_id) else quote(sample_id, safe="")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_png_atomic(image: Any, path: Path) -> None:
    """Write `image` as PNG at `path` so that the file is either absent or whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


_TMP_OUTPUT = re.compile(r"^\.(?P<name>.+)\.png\.\d+\.tmp$")


def remove_stale_temporaries(outputs: Path, names: set[str]) -> int:
    """Delete the temporary files (`save_png_atomic`'s `.<name>.png.<pid>.tmp`) that a killed run left
    for the outputs `names`; only this process's own samples, so that other shards' writes in
    progress are left alone. Returns how many were removed."""
    removed = 0
    for entry in os.scandir(outputs):
        match = _TMP_OUTPUT.match(entry.name)
        if match and match["name"] in names and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    if removed:
        logger.info("removed %d unfinished output file(s) of an interrupted run in %s", removed, outputs)
    return removed


def png_is_whole(path: Path) -> bool:
    """True when `path` is a PNG that opens and passes Pillow's chunk checks (not truncated)."""
    from PIL import Image

    if not path.is_file():
        return False
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception:  # noqa: BLE001 - any failure means "regenerate"
        return False
    return True


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_json_default, **kw)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("skipping a torn line in %s", path)
    return rows


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=None if enabled else True)


# --------------------------------------------------------------------------------------------
# processes


@dataclass
class ProcessLayout:
    """Which share of the samples this process takes, and how it meets the others."""

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] | None = None  # None: no collective (single process, or shards by hand)
    device: Any = None
    main_first: Callable[[], Any] = contextlib.nullcontext

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def by_hand(self) -> bool:
        return self.count > 1 and self.barrier is None


def process_layout(shard: tuple[int, int] | None = None) -> ProcessLayout:
    """`shard` given: that share, no collectives. Under `accelerate launch` with several processes:
    accelerate's process index, count, device and barrier. Otherwise one process."""
    if shard is not None:
        return ProcessLayout(index=shard[0], count=shard[1])
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        import torch
        from accelerate import PartialState

        # without CUDA, accelerate only goes multi-process when asked for the CPU (gloo backend)
        state = PartialState(cpu=not torch.cuda.is_available())
        if state.num_processes != world:
            raise InputError(f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es); "
                             "launch with `accelerate launch` or torchrun")
        return ProcessLayout(index=state.process_index, count=state.num_processes, barrier=state.wait_for_everyone,
                             device=str(state.device), main_first=state.main_process_first)
    return ProcessLayout()


# --------------------------------------------------------------------------------------------
# datasets


def sample_dataset_dir() -> Path:
    from refcoco_edit.models.resolver import cache_dir

    return cache_dir() / "datasets" / SAMPLE_DATASET_DIR


def _dataset_ready(folder: Path) -> bool:
    return (folder / "hf" / "dataset_dict.json").is_file() or (folder / "dataset_dict.json").is_file()


def ensure_sample_dataset(folder: Path | None = None, *, limit: int | None = None, progress: bool = False) -> Path:
    """The RefShapes RefCOCO-Edit: the bundled RefShapes sample built with its exact ground-truth edits
    (`build --pipelines synthetic --auto-accept oracle`), exported. Built once; later calls reuse it.
    `limit` builds only the first eligible refs (tests)."""
    folder = Path(folder) if folder is not None else sample_dataset_dir()
    if _dataset_ready(folder):
        return folder
    from refcoco_edit.curation.build import BuildConfig, build
    from refcoco_edit.dataset.card import CardInfo
    from refcoco_edit.dataset.export import export_store
    from refcoco_edit.refer.reader import RefCOCO
    from refcoco_edit.store import Store

    folder.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building the RefShapes RefCOCO-Edit into %s (once)", folder)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.build-") as tmp:
        store_path = Path(tmp) / "store.db"
        data = RefCOCO.load("sample", None, None)
        config = BuildConfig(limit=limit, pipelines=("synthetic",), auto_accept="oracle").check()
        with Store.open(store_path) as store:
            build(data, store, config, progress=progress)
        staged = Path(tmp) / "dataset"
        card = CardInfo()
        card.source = "RefShapes sample with its exact ground-truth edits (rie-bench --dataset sample)"
        export_store(store_path, staged, card=card)
        try:
            os.replace(staged, folder)
        except OSError:
            if not _dataset_ready(folder):  # not a concurrent build that won the race
                raise
    return folder


def resolve_dataset(spec: str, *, progress: bool = False) -> str:
    """A dataset argument as a loadable path or Hub id ('sample' -> the cached RefShapes RefCOCO-Edit)."""
    if spec == SAMPLE_DATASET:
        return str(ensure_sample_dataset(progress=progress))
    path = Path(spec).expanduser()
    return str(path.absolute()) if path.exists() else spec


@dataclass
class Selection:
    """The samples of a run, in order: a `datasets.Dataset` (all asked-for splits, limited)."""

    source: str
    split: str | None
    dataset: Any
    ids: list[str]
    splits: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, index: int) -> Any:
        from refcoco_edit.dataset.io import row_to_sample

        return row_to_sample(self.dataset[int(index)], self.dataset.features)

    def source_sizes(self) -> dict[str, tuple[int, int]]:
        """sample id -> (width, height) of its source image, read from the PNG headers only."""
        import io

        from datasets import Image as ImageFeature
        from PIL import Image

        raw = self.dataset.select_columns(["sample_id", "source_image"]).cast_column(
            "source_image", ImageFeature(decode=False))
        sizes = {}
        for row in raw:
            cell = row["source_image"]
            data = cell.get("bytes")
            with (Image.open(io.BytesIO(data)) if data is not None else Image.open(cell["path"])) as im:
                sizes[row["sample_id"]] = im.size
        return sizes

    def fingerprint(self) -> str:
        """sha256 over the selected samples' ids, texts, labels and stored image/mask bytes, in order:
        two runs with the same fingerprint scored the same samples, whatever copy they were read from."""
        digest = hashlib.sha256()
        columns = [c for c in _FINGERPRINT_COLUMNS if c in self.dataset.column_names]
        table = self.dataset.select_columns(columns).with_format("arrow")
        for batch in table.iter(batch_size=64):
            for name in columns:
                column = batch.column(name)
                if hasattr(column.type, "get_field_index") and column.type.get_field_index("bytes") >= 0:
                    values = column.combine_chunks().field("bytes").to_pylist() if hasattr(
                        column, "combine_chunks") else column.field("bytes").to_pylist()
                else:
                    values = column.to_pylist()
                for value in values:
                    blob = value if isinstance(value, bytes) else str(value).encode("utf-8")
                    digest.update(len(blob).to_bytes(8, "big"))
                    digest.update(blob)
        return digest.hexdigest()


def open_selection(dataset: str, split: str | None = None, limit: int | None = None, *,
                   progress: bool = False) -> Selection:
    """Load a RefCOCO-Edit dataset and pick the run's samples: `split` (all splits in their order when
    None), then the first `limit`."""
    import datasets

    from refcoco_edit.dataset.io import load_refcoco_edit

    source = resolve_dataset(dataset, progress=progress)
    loaded = load_refcoco_edit(source, split=split)
    if hasattr(loaded, "keys"):  # a DatasetDict: every split, in order
        if not list(loaded.keys()):
            raise DataError(f"dataset {source} has no split")
        parts = [loaded[k] for k in loaded.keys()]
        ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    else:
        ds = loaded
    if "sample_id" not in ds.column_names:
        raise DataError(f"dataset {source} has no sample_id column; is it a RefCOCO-Edit export?")
    if limit is not None:
        ds = ds.select(range(min(int(limit), len(ds))))
    ids = [str(i) for i in ds["sample_id"]]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dups = sorted({i for i in ids if i in seen or seen.add(i)})
        raise DataError(f"dataset {source} repeats sample ids: {', '.join(dups[:10])}")
    splits = [str(s) for s in ds["split"]] if "split" in ds.column_names else [split or ""] * len(ids)
    if not ids:
        raise InputError(f"dataset {source} has no sample{f' in split {split}' if split else ''}")
    return Selection(source=source, split=split, dataset=ds, ids=ids, splits=splits)


# --------------------------------------------------------------------------------------------
# environment


def git_info(folder: Path | None = None) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the checkout holding this package, or None outside one."""
    folder = folder or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def environment_info() -> dict[str, Any]:
    """Python, platform, package versions, git state and accelerator of this process."""
    from importlib.metadata import PackageNotFoundError, version

    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "packages": packages, "git": git_info()}
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = bool(torch.cuda.is_available())
        env["cuda"] = cuda
        if cuda:
            env["gpu"] = torch.cuda.get_device_name(0)
    return env


# --------------------------------------------------------------------------------------------
# metrics


def build_metrics(config: ScoreConfig) -> dict[str, Any]:
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
    from benchmark.metrics import parse_metric_list

    return {"metrics": parse_metric_list(config.metrics), "clip_model": config.clip_model,
            "aesthetic_model": config.aesthetic_model, "aesthetic_clip_model": config.aesthetic_clip_model,
            "bootstrap": config.bootstrap, "bootstrap_seed": config.bootstrap_seed, "confidence": 0.95}


def _metric_input(sample: Any, output: Any) -> Any:
    from benchmark.metrics import MetricInput

    return MetricInput(output=output, source=sample.source_image, edit_mask=sample.edit_mask,
                       source_mask=sample.source_mask, prompt=sample.prompt, edit_text=sample.edit_text,
                       referring_text=sample.referring_text, target_caption=None, edit_type=sample.edit_type,
                       pipeline=sample.pipeline, sample_id=sample.sample_id)


def score_samples(selection: Selection, indices: Sequence[int], output_path: Callable[[str], Path],
                  metrics: Mapping[str, Any], *, batch_size: int = 16, progress: bool = False,
                  extra: Callable[[int, Any], dict[str, Any]] | None = None) -> tuple[list[dict], dict[str, str]]:
    """Score the outputs of `indices`: rows (index, sample_id, split, edit_type, pipeline, prompt, output,
    each metric output's value, plus `extra(index, sample)`) and {metric: reason} of those unavailable."""
    from PIL import Image

    rows: list[dict[str, Any]] = []
    bar = _bar(len(indices), "score", progress)
    for start in range(0, len(indices), batch_size):
        chunk = list(indices[start:start + batch_size])
        samples = [selection.sample(i) for i in chunk]
        inputs = []
        for sample in samples:
            path = output_path(sample.sample_id)
            try:
                with Image.open(path) as im:
                    output = im.convert("RGB")
            except (OSError, ValueError) as exc:
                raise DataError(f"output of sample {sample.sample_id} ({path}) cannot be read: {exc}") from exc
            inputs.append(_metric_input(sample, output))
        values: dict[str, list[Any]] = {}
        for metric in metrics.values():
            values.update(metric.update(inputs))
        for j, (index, sample) in enumerate(zip(chunk, samples)):
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
                results[out] = MetricResult(out, metric.higher_is_better, available=False, reason=unavailable[name])
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


# --------------------------------------------------------------------------------------------
# shards


def _shard_stem(index: int, count: int) -> str:
    return f"scores-{index:03d}-of-{count:03d}"


def write_shard(out: Path, layout: ProcessLayout, token: str, rows: list[dict], unavailable: Mapping[str, str],
                seconds: float) -> None:
    folder = out / SHARDS
    stem = _shard_stem(layout.index, layout.count)
    _write_atomic(folder / f"{stem}.jsonl", "".join(_dumps(r) + "\n" for r in rows))
    meta = {"shard": [layout.index, layout.count], "token": token, "rows": len(rows),
            "unavailable": dict(unavailable), "seconds": seconds}
    _write_atomic(folder / f"{stem}.meta.json", _dumps(meta, indent=1))


def read_shards(out: Path, count: int, token: str) -> tuple[list[dict], dict[str, str], float] | None:
    """All shards' rows, unavailable metrics and scoring seconds; None while one is missing or stale."""
    rows: list[dict] = []
    unavailable: dict[str, str] = {}
    seconds = 0.0
    for index in range(count):
        stem = out / SHARDS / _shard_stem(index, count)
        meta_path = stem.with_name(stem.name + ".meta.json")
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("token") != token:
            return None
        part = read_jsonl(stem.with_name(stem.name + ".jsonl"))
        if len(part) != meta.get("rows"):
            return None
        rows.extend(part)
        unavailable.update(meta.get("unavailable") or {})
        seconds += float(meta.get("seconds") or 0.0)
    return rows, unavailable, seconds


# --------------------------------------------------------------------------------------------
# generation


def generation_log(out: Path) -> dict[str, dict[str, Any]]:
    """sample id -> its latest generation record (from every shard's log)."""
    records: dict[str, dict[str, Any]] = {}
    folder = out / GENERATION
    if folder.is_dir():
        for path in sorted(folder.glob("*.jsonl")):
            for row in read_jsonl(path):
                if "sample_id" in row:
                    records[str(row["sample_id"])] = row
    return records


def generate_outputs(method: Any, selection: Selection, indices: Sequence[int], out: Path, *, run_seed: int,
                     log_name: str = "main", progress: bool = False) -> tuple[int, int]:
    """Generate the missing outputs of `indices` (see the module docstring); returns (generated, cached)."""
    from benchmark.methods.base import EditResult

    outputs = out / OUTPUTS
    outputs.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(outputs, {output_name(selection.ids[i]) for i in indices})
    todo = [i for i in indices if not png_is_whole(outputs / f"{output_name(selection.ids[i])}.png")]
    cached = len(indices) - len(todo)
    if cached:
        logger.info("%d of %d outputs already in %s; generating %d", cached, len(indices), outputs, len(todo))
    if not todo:
        return 0, cached
    method.ensure_ready()
    log_path = out / GENERATION / f"{log_name}.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = _bar(len(todo), f"generate ({method.name})", progress)
    with log_path.open("a", encoding="utf-8") as log:
        for i in todo:
            sample = selection.sample(i)
            seed = sample_seed(run_seed, sample.sample_id)
            start = time.perf_counter()
            try:
                result = method.edit(sample, seed=seed)
            except Exception:
                logger.error("method %s failed on sample %s (seed %d); outputs so far are kept, a rerun resumes",
                             method.name, sample.sample_id, seed)
                raise
            seconds = time.perf_counter() - start
            image, info = (result.image, result.info) if isinstance(result, EditResult) else (result, {})
            if image.mode != "RGB":
                image = image.convert("RGB")
            save_png_atomic(image, outputs / f"{output_name(sample.sample_id)}.png")
            log.write(_dumps({"sample_id": sample.sample_id, "seed": seed, "seconds": round(seconds, 4),
                              "info": info}) + "\n")
            log.flush()
            bar.update(1)
    bar.close()
    return len(todo), cached


def _check_run_file(out: Path, run_record: dict[str, Any], overwrite: bool, layout: ProcessLayout) -> None:
    """Refuse to mix two configurations in one folder; `overwrite` clears the folder's run files."""
    path = out / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        keys = ("method", "seed", "dataset")
        differ = [k for k in keys if old.get(k) != run_record.get(k)]
        if differ and not overwrite:
            detail = "; ".join(f"{k}: {_dumps(old.get(k))} then, {_dumps(run_record.get(k))} now" for k in differ)
            raise InputError(f"{out} holds the outputs of another run ({detail}); use another --out, or --overwrite "
                             "to discard them")
        if differ and not layout.is_main:
            # Only the main process may clear the folder; a shard that went on would count the other
            # configuration's outputs as its own (under accelerate the main process settles run.json
            # first, so only a share run by hand gets here).
            raise InputError(f"{out} holds the outputs of another run; run share 0 (--shard 0/N) with --overwrite "
                             "first, then the other shares")
        if differ and overwrite:
            for name in (OUTPUTS, GENERATION, SHARDS):
                shutil.rmtree(out / name, ignore_errors=True)
            for name in (RESULTS, SAMPLES):
                (out / name).unlink(missing_ok=True)
    if layout.is_main or not path.is_file():
        _write_atomic(path, _dumps(run_record, indent=1, sort_keys=True))


# --------------------------------------------------------------------------------------------
# the two entry points


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


def _write_results(out: Path, record: dict[str, Any], rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["index"])
    _write_atomic(out / SAMPLES, "".join(_dumps({k: v for k, v in r.items() if k != "index"}) + "\n" for r in rows))
    _write_atomic(out / RESULTS, _dumps(record, indent=1))


def run_benchmark(config: RunConfig, *, method: Any = None) -> RunSummary:
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
        _check_run_file(out, {"method": method_config, "seed": config.seed, "dataset": selection.source},
                        config.overwrite, layout)
    fingerprint = selection.fingerprint()

    indices = list(range(layout.index, len(selection), layout.count))
    generated, cached = generate_outputs(method, selection, indices, out, run_seed=config.seed,
                                         log_name=f"shard-{layout.index:03d}-of-{layout.count:03d}",
                                         progress=config.progress)
    gen_seconds = time.perf_counter() - start

    score_config = ScoreConfig(**{k: getattr(config, k) for k in ScoreConfig.__dataclass_fields__})
    score_config.device = device
    token = hashlib.sha256(_dumps([method_config, config.seed, fingerprint, metrics_config(score_config)],
                                  sort_keys=True).encode()).hexdigest()[:16]
    log = generation_log(out)

    def extra(index: int, sample: Any) -> dict[str, Any]:
        rec = log.get(sample.sample_id, {})
        return {"seed": sample_seed(config.seed, sample.sample_id), "generation": rec.get("info", {}),
                "seconds": rec.get("seconds")}

    t0 = time.perf_counter()
    rows, unavailable = score_samples(selection, indices, lambda sid: out / OUTPUTS / f"{output_name(sid)}.png",
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
               "metrics_config": metrics_config(score_config)},
    )
    _write_results(out, record, all_rows)
    summary.results = record
    summary.seconds = time.perf_counter() - start
    logger.info("generation %.1f s, all %.1f s", gen_seconds, summary.seconds)
    return summary


def score_predictions(pred: Path | str, dataset: str, *, out: Path | str | None = None, split: str | None = None,
                      limit: int | None = None, label: str | None = None,
                      config: ScoreConfig | None = None) -> RunSummary:
    """`rie-bench score`: validate a folder of outputs named by sample id, score it, write results.json and
    samples.jsonl (into `out`, by default the folder itself). Raises `SubmissionError` naming every
    problem when the submission is not valid."""
    from benchmark.validate import SubmissionError, prediction_folder, validate_submission

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
    _write_results(out_dir, record, rows)
    return RunSummary(out=out_dir, results=record, scored=len(rows), seconds=time.perf_counter() - start)


def iter_results(paths: Sequence[Path | str]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(run folder, results.json content) for run folders or results.json files."""
    for p in map(Path, paths):
        file = p / RESULTS if p.is_dir() else p
        if not file.is_file():
            raise InputError(f"no {RESULTS} at {p}; run `rie-bench run` or `rie-bench score` first")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{file} cannot be read: {exc}") from exc
        if data.get("schema") != RESULTS_SCHEMA:
            raise DataError(f"{file} is not a rie-bench results file (schema {data.get('schema')!r})")
        yield file.parent, data
