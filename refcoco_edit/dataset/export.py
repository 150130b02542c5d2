"""Export: the annotation store (or any stream of `Sample`s) -> a Hugging Face dataset folder.

Layout of an exported folder DIR::

    DIR/README.md                                  dataset card: YAML (dataset_info, configs) + prose
    DIR/data/<split>-00000-of-0000N.parquet        parquet shards, image and mask bytes embedded
    DIR/hf/                                        the same DatasetDict written with save_to_disk

`datasets.load_dataset(DIR)` reads the parquet files through the card's `configs` (no custom code),
`datasets.load_from_disk(DIR/hf)` memory-maps the Arrow copy, and `push_to_hub` uploads the parquet
files and the card (the layout the Hub expects).

Why it is built this way:
- Streaming: rows are validated, encoded and appended to an open parquet writer per split, one row
  group (`row_group_size` rows) at a time; a shard is closed every `shard_size` rows. Memory holds at
  most one row group per split, whatever the dataset's size. The `save_to_disk` copy is then
  streamed from the parquet files, row group by row group, into save_to_disk's Arrow layout.
- Images from the store are copied as the PNG bytes of its blobs (lossless, no decode and re-encode);
  masks are written as 8-bit "L" PNGs of 0 and 255 (viewers show them; readers threshold them).
- All or nothing: everything is written into a temporary folder beside DIR and renamed into place at
  the end. Every row is checked with `schema.validate` and for the background invariant (the edited
  image equals the source outside M_e, `background_problems`; this decodes both images of a row,
  the only decoding an export from the store does) before it is written; one bad row and the
  export refuses (naming every bad row and why) and leaves no half dataset behind. An exception
  removes the temporary folder; a killed process may leave it (`<name>.export-tmp-<pid>-*`), never a
  partial DIR, and the next export of DIR removes it or, when the kill fell between the two renames
  of an overwrite, puts the old dataset back (`recover`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refcoco_edit.dataset.card import CardInfo, Stats, render_card
from refcoco_edit.dataset.io import SAVE_TO_DISK_DIR, sample_to_row
from refcoco_edit.errors import DataError, InputError
from refcoco_edit.schema import Sample, validate

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1000  # rows per parquet file
DEFAULT_ROW_GROUP_SIZE = 100  # rows per parquet row group (the unit held in memory)
SPLIT_ORDER = ("train", "val", "validation", "test", "testA", "testB", "testC")
DATA_DIR = "data"
CARD = "README.md"
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")  # what `datasets` accepts as a split name
_EMPTY_EDIT_MASK = "edit_mask is empty but the edit is not a no-op"
# scalar columns that get parquet statistics; image bytes would bloat the footer with min/max values
_STAT_COLUMNS = ["sample_id", "image_id", "ref_id", "ann_id", "split", "edit_type", "pipeline", "status"]
MAX_NAMED_ROWS = 20  # bad rows named in the error message (all of them are on the exception)


class ExportRefusedError(DataError):
    """Rows failed validation; nothing was published. `problems`: [(sample_id, [reasons])]."""

    def __init__(self, problems: list[tuple[str, list[str]]], checked: int) -> None:
        self.problems = problems
        self.checked = checked
        named = "; ".join(f"{sid}: {', '.join(reasons)}" for sid, reasons in problems[:MAX_NAMED_ROWS])
        more = f" (and {len(problems) - MAX_NAMED_ROWS} more)" if len(problems) > MAX_NAMED_ROWS else ""
        super().__init__(f"export refused: {len(problems)} of {checked} rows are not valid, nothing was written: "
                         f"{named}{more}")


@dataclass
class ExportSummary:
    """What an export wrote."""

    out: Path
    rows: int
    splits: dict[str, int]
    files: list[str]  # paths relative to `out`
    stats: Stats
    seconds: float
    download_size: int
    dataset_size: int
    save_to_disk: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "rows": self.rows, "splits": self.splits, "files": self.files,
                "by_edit_type": self.stats.by_edit_type, "by_pipeline": self.stats.by_pipeline,
                "seconds": round(self.seconds, 3), "parquet_bytes": self.download_size,
                "save_to_disk": self.save_to_disk}


def background_problems(sample: Sample) -> list[str]:
    """The background invariant: the edited image equals the source at every pixel outside M_e
    (docs/invariant.md). [] when it holds, or when images or masks are missing or of other sizes
    (which `schema.validate` reports)."""
    from refcoco_edit.imaging.masks import background_changes

    if sample.source_image is None or sample.edited_image is None or sample.edit_mask is None:
        return []
    try:
        n = background_changes(sample.source_image, sample.edited_image, sample.edit_mask)
    except InputError:
        return []  # sizes disagree: validate names it
    except (DataError, OSError, ValueError) as exc:
        return [f"an image does not decode: {exc}"]
    if not n:
        return []
    return [f"edited_image differs from source_image at {n} pixels outside edit_mask (the background invariant; "
            "`refcoco-edit store repair --background` mends a store)"]


def split_sort_key(name: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


@dataclass
class _SplitWriter:
    """Open parquet shard and pending rows of one split."""

    name: str
    buffer: list[dict] = field(default_factory=list)
    writer: Any = None  # pyarrow.parquet.ParquetWriter
    shard_rows: int = 0
    shards: list[Path] = field(default_factory=list)  # temporary names, in order
    rows: int = 0
    nbytes: int = 0


class DatasetWriter:
    """Writes validated `Sample`s into a dataset folder; see the module docstring.

        with DatasetWriter(out) as w:
            for sample in samples:
                w.add(sample)
            summary = w.finish()

    Leaving the `with` block without `finish` (an exception, a refused row) removes the temporary
    folder; `out` is only ever replaced whole.
    """

    def __init__(self, out: Path | str, *, shard_size: int = DEFAULT_SHARD_SIZE,
                 row_group_size: int = DEFAULT_ROW_GROUP_SIZE, overwrite: bool = False,
                 card: CardInfo | None = None, save_to_disk: bool = True) -> None:
        from refcoco_edit.schema import features

        if shard_size < 1 or row_group_size < 1:
            raise InputError("shard size and row group size must be at least 1")
        self.out = Path(out)
        self.shard_size = shard_size
        self.row_group_size = min(row_group_size, shard_size)
        self.overwrite = overwrite
        self.card = card or CardInfo()
        self.save_to_disk = save_to_disk
        self.features = features()
        self.schema = self.features.arrow_schema
        recover(self.out)
        _check_target(self.out, overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f"{self.out.name}.export-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        (self.tmp / DATA_DIR).mkdir(parents=True)
        self._splits: dict[str, _SplitWriter] = {}
        self.stats = Stats()
        self.problems: list[tuple[str, list[str]]] = []
        self.checked = 0
        self._started = time.perf_counter()
        self._done = False

    # ---------------------------------------------------------------- context
    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._done:
            self.abort()

    def abort(self) -> None:
        """Drop everything written so far; `out` is untouched."""
        for sw in self._splits.values():
            if sw.writer is not None:
                try:
                    sw.writer.close()
                except Exception:  # noqa: BLE001 - closing a half-written file on the way out
                    pass
                sw.writer = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    # ---------------------------------------------------------------- rows
    def check(self, sample: Sample, *, no_op: bool = False) -> list[str]:
        """Why `sample` may not be published ([] when it may); `no_op`: the edit changes no pixel,
        so an empty edit mask is right."""
        problems = validate(sample)
        if no_op:
            problems = [p for p in problems if p != _EMPTY_EDIT_MASK]
        else:
            problems += background_problems(sample)
        if not isinstance(sample.split, str) or not _SPLIT_NAME.match(sample.split or ""):
            problems.append(f"split {sample.split!r} is not a usable split name (letters, digits, _ and .)")
        if not sample.sample_id:
            problems.append("sample_id is empty")
        return problems

    def add(self, sample: Sample, *, png: dict[str, bytes] | None = None, no_op: bool = False,
            problems: Iterable[str] = ()) -> list[str]:
        """Validate and append one sample; its problems ([] when written). After the first bad row
        nothing more is written, but rows are still checked so the refusal can name them all.

        `png`: PNG bytes of the image fields when already at hand (then `sample`'s images need only
        a `.size`); `problems`: reasons found by the caller (e.g. a missing image file).
        """
        self.checked += 1
        found = list(problems) + self.check(sample, no_op=no_op)
        if found:
            self.problems.append((sample.sample_id or f"(row {self.checked})", found))
            return found
        if self.problems:
            return []
        row = self.features.encode_example(sample_to_row(sample, png=png))
        sw = self._splits.get(sample.split)
        if sw is None:
            sw = self._splits[sample.split] = _SplitWriter(sample.split)
        sw.buffer.append(row)
        sw.rows += 1
        self.stats.add(sample.split, sample.edit_type, sample.pipeline, float(np.asarray(sample.source_mask).mean()),
                       float(np.asarray(sample.edit_mask).mean()), sample.annotator)
        if len(sw.buffer) >= self.row_group_size or sw.shard_rows + len(sw.buffer) >= self.shard_size:
            self._flush(sw)
        return []

    def _flush(self, sw: _SplitWriter) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        while sw.buffer:
            room = self.shard_size - sw.shard_rows
            chunk, sw.buffer = sw.buffer[:room], sw.buffer[room:]
            table = pa.Table.from_pylist(chunk, schema=self.schema)
            sw.nbytes += table.nbytes
            if sw.writer is None:
                path = self.tmp / DATA_DIR / f"{sw.name}-{len(sw.shards):05d}.partial"
                sw.shards.append(path)
                sw.writer = pq.ParquetWriter(str(path), self.schema, write_statistics=_STAT_COLUMNS)
            sw.writer.write_table(table, row_group_size=self.row_group_size)
            sw.shard_rows += len(chunk)
            if sw.shard_rows >= self.shard_size:
                sw.writer.close()
                sw.writer, sw.shard_rows = None, 0

    # ---------------------------------------------------------------- finishing
    def finish(self) -> ExportSummary:
        """Close the shards, make the save_to_disk copy and the card, and move the folder into place.

        Raises `ExportRefusedError` (after removing the temporary folder) when any row was bad, and
        `InputError` when there was no row at all.
        """
        if self._done:
            raise InputError("this export is already finished or aborted")
        try:
            if self.problems:
                raise ExportRefusedError(self.problems, self.checked)
            if not self._splits:
                raise InputError("nothing to export: no rows were given")
            for sw in self._splits.values():
                self._flush(sw)
                if sw.writer is not None:
                    sw.writer.close()
                    sw.writer = None
            splits_meta = self._name_shards()
            download_size = sum((self.tmp / f).stat().st_size for s in splits_meta.values() for f in s["files"])
            dataset_size = sum(s["num_bytes"] for s in splits_meta.values())
            if self.save_to_disk:
                self._save_to_disk_copy(splits_meta)
            card = render_card(self.features, splits_meta, self.stats, self.card, download_size, dataset_size)
            (self.tmp / CARD).write_text(card, encoding="utf-8")
            _install(self.tmp, self.out, self.overwrite)
        except BaseException:
            self.abort()
            raise
        self._done = True
        files = [f for s in splits_meta.values() for f in s["files"]]
        summary = ExportSummary(self.out, self.stats.rows, {k: v["num_examples"] for k, v in splits_meta.items()},
                                files, self.stats, time.perf_counter() - self._started, download_size,
                                dataset_size, self.save_to_disk)
        log.info("exported %d rows (%s) to %s in %.1f s", summary.rows,
                 ", ".join(f"{k} {v}" for k, v in summary.splits.items()), self.out, summary.seconds)
        return summary

    def _name_shards(self) -> dict[str, dict[str, Any]]:
        """Rename `<split>-00000.partial` to `<split>-00000-of-0000N.parquet`; per-split metadata."""
        meta: dict[str, dict[str, Any]] = {}
        for name in sorted(self._splits, key=split_sort_key):
            sw = self._splits[name]
            files = []
            for i, tmp in enumerate(sw.shards):
                rel = f"{DATA_DIR}/{name}-{i:05d}-of-{len(sw.shards):05d}.parquet"
                os.replace(tmp, self.tmp / rel)
                files.append(rel)
            meta[name] = {"num_examples": sw.rows, "num_bytes": sw.nbytes, "files": files}
        return meta

    def _save_to_disk_copy(self, splits_meta: dict[str, dict[str, Any]]) -> None:
        """DIR/hf/ in `save_to_disk`'s layout, streamed from the parquet files row group by row group.

        The layout is what `Dataset.save_to_disk` writes and `datasets.load_from_disk` reads:
        `dataset_dict.json` ({"splits": [...]}), and per split `data-NNNNN-of-NNNNN.arrow` (Arrow IPC
        streams, one per parquet shard), `dataset_info.json` and `state.json`. It is written here rather
        than by `load_dataset("parquet") + save_to_disk`, because that path's resident memory grew with
        the dataset's size (benchmarks/export_bench.py measured it); the tests load the copy back with
        `load_from_disk` and compare every field.
        """
        import json

        import pyarrow as pa
        import pyarrow.parquet as pq
        from datasets import DatasetInfo, SplitDict, SplitInfo

        root = self.tmp / SAVE_TO_DISK_DIR
        split_dict = SplitDict()
        for name, s in splits_meta.items():
            split_dict.add(SplitInfo(name=name, num_bytes=int(s["num_bytes"]), num_examples=int(s["num_examples"])))
        for name, s in splits_meta.items():
            folder = root / name
            folder.mkdir(parents=True)
            n = len(s["files"])
            arrow_files = [f"data-{i:05d}-of-{n:05d}.arrow" for i in range(n)]
            for rel, arrow_name in zip(s["files"], arrow_files):
                pf = pq.ParquetFile(self.tmp / rel)
                with pa.OSFile(str(folder / arrow_name), "wb") as sink, \
                        pa.ipc.new_stream(sink, self.schema) as stream:
                    for batch in pf.iter_batches(batch_size=self.row_group_size):
                        stream.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=self.schema))
                pf.close()
            info = DatasetInfo(description=self.card.summary, features=self.features, splits=split_dict,
                               dataset_size=sum(int(v["num_bytes"]) for v in splits_meta.values()),
                               config_name="default")
            info.write_to_directory(str(folder), pretty_print=True)
            state = {"_data_files": [{"filename": f} for f in arrow_files], "_fingerprint": uuid.uuid4().hex[:16],
                     "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                     "_output_all_columns": False, "_split": name}
            (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        (root / "dataset_dict.json").write_text(json.dumps({"splits": list(splits_meta)}), encoding="utf-8")


def _check_target(out: Path, overwrite: bool) -> None:
    """`out` may be written when it is absent, empty, or (with `overwrite`) an earlier export: the
    whole folder is replaced, so any other folder (a home, a project) is refused, never deleted."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise InputError(f"{out} exists and is not empty; pass --overwrite to replace it")
    names = {p.name for p in out.iterdir()}
    if not (out / CARD).is_file() or not (out / DATA_DIR).is_dir() or names - {CARD, DATA_DIR, SAVE_TO_DISK_DIR}:
        raise InputError(f"{out} does not hold an earlier export (only {CARD}, {DATA_DIR}/ and "
                         f"{SAVE_TO_DISK_DIR}/); --overwrite replaces the whole folder, so it is refused here")


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Put the finished folder at `out` by renames: `out` is the old dataset or the new one, never a mix."""
    _check_target(out, overwrite)
    old = None
    if out.is_dir():
        old = out.parent / f"{out.name}.export-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int | None) -> bool:
    """Whether process `pid` still runs (None: a name from before pids were recorded, taken as gone)."""
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def recover(out: Path) -> list[str]:
    """Finish or roll back what killed exports of `out` left beside it; what was done, one line each.

    A process killed while writing leaves `<out>.export-tmp-<pid>-*` (removed once that process is
    gone); one killed between the two renames of an overwrite leaves the old export at
    `<out>.export-old-<pid>-*` and no `out`: the old export is renamed back (then the unfinished
    folder is removed as above). An old export whose replacement is in place is removed.
    """
    out = Path(out)
    pattern = re.compile(re.escape(out.name) + r"\.export-(tmp|old)-(?:(\d+)-)?[0-9a-f]{8}")
    done = []
    if not out.parent.is_dir():
        return done
    leftovers = sorted((m[1] != "old", p, m) for p in out.parent.iterdir() if (m := pattern.fullmatch(p.name)))
    for _tmp_first, path, m in leftovers:
        if (m[1] == "tmp" and m[2] is None) or _alive(int(m[2]) if m[2] else None):
            continue
        if m[1] == "old" and not out.exists():
            os.replace(path, out)
            done.append(f"restored {out} from {path.name}, left by a killed export")
        else:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name}, left by a killed export")
    for line in done:
        log.warning(line)
    return done


# ---------------------------------------------------------------------------- from the store
def _lazy_image(data: bytes, what: str):
    """A PIL image whose header is read (size, mode, checked against the pixel limit) but whose
    pixels are not decoded."""
    from refcoco_edit.imaging.files import open_image

    return open_image(data, what=what, mode=None, load=False)


def export_store(store_path: Path | str, out: Path | str, *, statuses: Iterable[str] = ("accepted",),
                 shard_size: int = DEFAULT_SHARD_SIZE, row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
                 overwrite: bool = False, card: CardInfo | None = None, save_to_disk: bool = True,
                 progress: bool = False) -> ExportSummary:
    """Export the store's samples with the given statuses (insertion order, split by `split`)."""
    from refcoco_edit.schema import IMAGE_FIELDS, STATUSES
    from refcoco_edit.store import Store

    statuses = list(dict.fromkeys(statuses))
    bad = [s for s in statuses if s not in STATUSES]
    if bad or not statuses:
        raise InputError(f"status must be among {', '.join(STATUSES)}; got {', '.join(bad) or 'nothing'}")
    with Store.open(store_path, create=False) as store:
        total = sum(store.count(status=s) for s in statuses)
        if total == 0:
            raise InputError(f"store {store_path} has no sample with status {' or '.join(statuses)}; nothing to export")
        card = card or CardInfo()
        if not card.source:
            card.source = f"annotation store `{Path(store_path).name}`, status {' or '.join(statuses)}"
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="export", unit="row", disable=None)
        # The background check decodes the source; the samples of one picture follow each other
        # (the build makes them ref by ref), so the last decoded source is kept for the next row.
        last_source: tuple[str, Any, bytes] = ("", None, b"")
        with DatasetWriter(out, shard_size=shard_size, row_group_size=row_group_size, overwrite=overwrite,
                           card=card, save_to_disk=save_to_disk) as writer:
            for status in statuses:
                for rec in store.list_samples(status=status, images=False):
                    sample, png, missing = rec.sample, {}, []
                    for name in IMAGE_FIELDS:
                        digest = rec.blobs.get(name)
                        if not digest:
                            continue
                        if name == "source_image" and digest == last_source[0]:
                            png[name] = last_source[2]
                            sample.source_image = last_source[1]
                            continue
                        try:
                            png[name] = store.blobs.read_bytes(digest)
                        except DataError as exc:
                            missing.append(f"{name}: {exc}")
                            continue
                        try:
                            setattr(sample, name, _lazy_image(png[name], f"{name}: image blob {digest[:12]}"))
                        except DataError as exc:
                            missing.append(str(exc))
                            continue
                        if name == "source_image":
                            last_source = (digest, sample.source_image, png[name])
                    no_op = bool(rec.blobs.get("source_image")) and rec.blobs.get("source_image") == rec.blobs.get(
                        "edited_image")
                    writer.add(sample, png=png, no_op=no_op, problems=missing)
                    if bar is not None:
                        bar.update(1)
            if bar is not None:
                bar.close()
            return writer.finish()


# ---------------------------------------------------------------------------- the Hub
def push_to_hub(folder: Path | str, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload RefCOCO-Edit") -> str:
    """Upload an exported folder's card and parquet files to a Hub dataset repo (created if needed).

    The `save_to_disk` copy (`hf/`) stays local: the Hub reads the parquet files through the card.
    Returns the repo's URL.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / CARD).is_file() or not (folder / DATA_DIR).is_dir():
        raise InputError(f"{folder} is not an exported dataset (no {CARD} or {DATA_DIR}/)")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                      allow_patterns=[CARD, f"{DATA_DIR}/*.parquet"], commit_message=commit_message)
    return str(url)
