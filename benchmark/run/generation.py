"""Generating a run's outputs, resumably.

An output is written to a temporary name and renamed, so a killed run leaves either a whole PNG or
none; a rerun removes the leftovers of its own samples, skips every sample whose PNG opens, and
loads the method only when something is left to generate. Each sample's seed comes from the run
seed and its sample id (`sample_seed`), so a resumed, sharded or reordered run makes the same
outputs as one straight run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.run.folder import (
    GENERATION,
    OUTPUTS,
    output_name,
    output_path,
    png_is_whole,
    read_jsonl,
    remove_stale_temporaries,
    save_png_atomic,
)
from benchmark.run.progress import sample_bar
from refcoco_edit.io import dumps

if TYPE_CHECKING:
    from benchmark.methods.base import Method
    from benchmark.run.dataset import Selection

logger = logging.getLogger(__name__)


def sample_seed(run_seed: int, sample_id: str) -> int:
    """The generation seed of one sample: from the run seed and the sample id (order independent)."""
    return int.from_bytes(hashlib.sha256(f"{int(run_seed)}:{sample_id}".encode()).digest()[:4], "big") >> 1


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


def generate_outputs(method: Method, selection: Selection, indices: Sequence[int], out: Path, *, run_seed: int,
                     log_name: str = "main", progress: bool = False) -> tuple[int, int]:
    """Generate the missing outputs of `indices` (see the module docstring); returns (generated, cached)."""
    from benchmark.methods.base import EditResult

    outputs = out / OUTPUTS
    outputs.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(outputs, {output_name(selection.ids[i]) for i in indices})
    todo = [i for i in indices if not png_is_whole(output_path(out, selection.ids[i]))]
    cached = len(indices) - len(todo)
    if cached:
        logger.info("%d of %d outputs already in %s; generating %d", cached, len(indices), outputs, len(todo))
    if not todo:
        return 0, cached
    method.ensure_ready()
    log_path = out / GENERATION / f"{log_name}.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = sample_bar(len(todo), f"generate ({method.name})", progress)
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
            save_png_atomic(image, output_path(out, sample.sample_id))
            log.write(dumps({"sample_id": sample.sample_id, "seed": seed, "seconds": round(seconds, 4),
                             "info": info}) + "\n")
            log.flush()
            bar.update(1)
    bar.close()
    return len(todo), cached
