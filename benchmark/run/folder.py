"""The run folder: where each file of a run lives, how it is written, and how it is read back.

Layout of a run folder DIR::

    DIR/run.json                       what generated the outputs (checked when a run resumes)
    DIR/outputs/<sample_id>.png        one output per sample, written atomically (temp file + rename)
    DIR/generation/<shard>.jsonl       per sample: seed, seconds, the method's notes (appended)
    DIR/shards/scores-I-of-N.jsonl     per-process scores, gathered by the main process
    DIR/results.json                   method, config, seeds, versions, git hash, dataset fingerprint,
                                       metrics with bootstrap CIs, per-edit-type / per-pipeline tables
    DIR/samples.jsonl                  one row per sample with its metric values

Every whole file is written through `refcoco_edit.io` (temporary file beside it, renamed over it), so
a killed run leaves either a whole file or none, plus at most a `.<name>.<random>.tmp` leftover that
the next run removes. Output file names are sample ids; an id with characters outside
[A-Za-z0-9._-] is percent-encoded (`output_name`), and a submission for `rie-bench score` must use
the same names.

A run folder may come from someone else (a leaderboard compares downloaded runs): every file it names
is read through `refcoco_edit.imaging.files.inside` (no path or link leads outside the folder) and
every image through `open_image` (the pixel limit).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from refcoco_edit.errors import DataError, InputError
from refcoco_edit.imaging.files import check_whole, inside
from refcoco_edit.io import atomic_path, atomic_write_text, dumps

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

RESULTS_SCHEMA = "rie-bench/results/v1"
OUTPUTS = "outputs"
GENERATION = "generation"
SHARDS = "shards"
RESULTS = "results.json"
SAMPLES = "samples.jsonl"
RUN_FILE = "run.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# What `atomic_path` leaves beside `<name>.png` when its writer is killed: `.<name>.png.<random>.tmp`
# (also the `.<name>.png.<pid>.tmp` of earlier versions).
_TMP_OUTPUT = re.compile(r"^\.(?P<name>.+)\.png\.[A-Za-z0-9_]+\.tmp$")


def output_name(sample_id: str) -> str:
    """The file name (without .png) that holds `sample_id`'s output."""
    return sample_id if _SAFE_NAME.match(sample_id) else quote(sample_id, safe="")


def output_path(out: Path, sample_id: str) -> Path:
    """Where the run folder `out` keeps `sample_id`'s output."""
    return out / OUTPUTS / f"{output_name(sample_id)}.png"


def save_png_atomic(image: Image.Image, path: Path) -> None:
    """Write `image` as PNG at `path` so that the file is either absent or whole."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def remove_stale_temporaries(outputs: Path, names: set[str]) -> int:
    """Delete the temporary files (`.<name>.png.<random>.tmp`) that a killed run left for the outputs
    `names`; only this process's own samples, so that other shards' writes in progress are left
    alone. Returns how many were removed."""
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
    """True when `path` is a whole PNG (`check_whole`: within the pixel limit, checksums right, decoding
    to the end) and not a link to a file outside its folder (such a file is generated again, which
    replaces the link)."""
    try:
        inside(path.parent, path.name)
    except DataError:
        return False
    if not path.is_file():
        return False
    try:
        check_whole(path, formats=["PNG"])
    except DataError:
        return False
    return True


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    rows: list[dict[str, Any]] = []
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


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write `rows` as JSON lines, atomically."""
    atomic_write_text(path, "".join(dumps(r) + "\n" for r in rows))


def _with_new_defaults(old_method: Any, new_method: Any, option_defaults: Mapping[str, Any]) -> Any:
    """`old_method` (run.json's method record) with the options it predates added at the value they have
    now, when that value is their default: an option added later defaults to what the method did before
    it existed, so the outputs already made stay this run's."""
    if not isinstance(old_method, dict) or not isinstance(new_method, dict):
        return old_method
    old_opts, new_opts = old_method.get("options"), new_method.get("options")
    if not isinstance(old_opts, dict) or not isinstance(new_opts, dict):
        return old_method
    added = {k: v for k, v in new_opts.items() if k not in old_opts and k in option_defaults
             and v == option_defaults[k]}
    return {**old_method, "options": {**old_opts, **added}} if added else old_method


def check_run_file(out: Path, run_record: dict[str, Any], overwrite: bool, *, is_main: bool,
                   option_defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse to mix two configurations in one folder; `overwrite` clears the folder's run files.
    `option_defaults` (the method's) lets a folder made before an option existed be resumed with
    that option at its default.

    Only the main process (`is_main`) may clear the folder or rewrite run.json."""
    path = out / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if option_defaults:
            old["method"] = _with_new_defaults(old.get("method"), run_record.get("method"), option_defaults)
        keys = ("method", "seed", "dataset")
        differ = [k for k in keys if old.get(k) != run_record.get(k)]
        if differ and not overwrite:
            detail = "; ".join(f"{k}: {dumps(old.get(k))} then, {dumps(run_record.get(k))} now" for k in differ)
            raise InputError(f"{out} holds the outputs of another run ({detail}); use another --out, or --overwrite "
                             "to discard them")
        if differ and not is_main:
            # A shard that went on would count the other configuration's outputs as its own (under
            # accelerate the main process settles run.json first, so only a share run by hand gets here).
            raise InputError(f"{out} holds the outputs of another run; run share 0 (--shard 0/N) with --overwrite "
                             "first, then the other shares")
        if differ and overwrite:
            for name in (OUTPUTS, GENERATION, SHARDS):
                shutil.rmtree(out / name, ignore_errors=True)
            for name in (RESULTS, SAMPLES):
                (out / name).unlink(missing_ok=True)
    if is_main or not path.is_file():
        atomic_write_text(path, dumps(run_record, indent=1, sort_keys=True))


def write_results(out: Path, record: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """samples.jsonl (rows in dataset order, without their index) and results.json."""
    rows = sorted(rows, key=lambda r: r["index"])
    write_jsonl(out / SAMPLES, [{k: v for k, v in r.items() if k != "index"} for r in rows])
    atomic_write_text(out / RESULTS, dumps(record, indent=1))


def iter_results(paths: Sequence[Path | str]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(run folder, results.json content) for run folders or results.json files."""
    for p in map(Path, paths):
        file = p / RESULTS if p.is_dir() else p
        if p.is_dir():
            inside(p, RESULTS, what=f"run {p}")  # the folder's results.json may be a link out of it
        if not file.is_file():
            raise InputError(f"no {RESULTS} at {p}; run `rie-bench run` or `rie-bench score` first")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{file} cannot be read: {exc}") from exc
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema != RESULTS_SCHEMA:
            raise DataError(f"{file} is not a rie-bench results file (schema {schema!r})")
        yield file.parent, data
