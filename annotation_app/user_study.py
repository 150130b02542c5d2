"""The user study (the paper's Table 3): raters score the outputs of several editing methods.

Each study item is a source image, its prompt and one output per method. A rater sees the outputs
of an item in an order shuffled for that rater and item, labelled A, B, C ... (method names hidden),
and gives each a 1-5 score for *quality* (does the edit look right and real) and for *consistency*
(is everything the prompt did not ask to change left as it was). The export gives, per method, the
mean of each score with a 95% confidence interval.

Why a cluster bootstrap for the intervals: the scores of one item are not independent (a hard
prompt lowers every method's score on it, and several raters score the same output), so items, not
single scores, are resampled: `B` times, draw as many items as there are, with replacement, and take
the mean of all scores of the drawn items; the interval is the 2.5th and 97.5th percentile of those
means. With a fixed seed the export is reproducible.

Stored apart from the annotation store (which has no table for it), in `<store>.study.sqlite` with
its images in `<store>.study.sqlite.blobs/`, written with the store's content-addressed image writer.

Items come from a JSON-lines manifest, one item per line:
`{"item_id": "...", "source": "src.png", "prompt": "...", "outputs": {"method": "out.png", ...}}`
(optional "referring_spans" and "edit_spans"); image paths are relative to the manifest.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import sqlite3
import string
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from refcoco_edit.errors import DataError, InputError

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

SCORES = (1, 2, 3, 4, 5)
CRITERIA = ("quality", "consistency")
MAX_METHODS = 8  # output slots one item may have (the page lays out this many)
SLOT_LABELS = string.ascii_uppercase[:MAX_METHODS]
BOOTSTRAP = 2000
CONFIDENCE = 0.95

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, source TEXT NOT NULL, prompt TEXT NOT NULL,
    referring_spans TEXT NOT NULL DEFAULT '[]', edit_spans TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outputs (
    item_id TEXT NOT NULL REFERENCES items(item_id), method TEXT NOT NULL, image TEXT NOT NULL,
    PRIMARY KEY (item_id, method));
CREATE TABLE IF NOT EXISTS ratings (
    rater TEXT NOT NULL, item_id TEXT NOT NULL, method TEXT NOT NULL, position INTEGER NOT NULL,
    quality INTEGER NOT NULL CHECK (quality BETWEEN 1 AND 5),
    consistency INTEGER NOT NULL CHECK (consistency BETWEEN 1 AND 5),
    created_at TEXT NOT NULL,
    PRIMARY KEY (rater, item_id, method),
    FOREIGN KEY (item_id, method) REFERENCES outputs(item_id, method));
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ShownOutput:
    label: str  # "A", "B", ... as the rater sees it
    method: str  # hidden from the rater
    image: Image


@dataclass
class StudyItem:
    item_id: str
    source: Any
    prompt: str
    referring_spans: list
    edit_spans: list
    outputs: list[ShownOutput]


@dataclass
class MethodSummary:
    method: str
    ratings: int
    items: int
    raters: int
    quality_mean: float
    quality_low: float
    quality_high: float
    consistency_mean: float
    consistency_low: float
    consistency_high: float


def shown_order(methods: list[str], rater: str, item_id: str) -> list[str]:
    """The methods of an item in the order one rater sees them: shuffled, the same on every visit."""
    order = sorted(methods)
    random.Random(f"{rater}\x00{item_id}").shuffle(order)
    return order


def cluster_bootstrap_ci(values_by_item: list[np.ndarray], *, resamples: int = BOOTSTRAP,
                         confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of all values and a percentile interval from resampling items."""
    groups = [np.asarray(v, dtype=np.float64) for v in values_by_item if len(v)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    sums = np.array([g.sum() for g in groups])
    counts = np.array([len(g) for g in groups], dtype=np.float64)
    mean = float(sums.sum() / counts.sum())
    if len(groups) == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(groups), size=(resamples, len(groups)))
    boot = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


class StudyStore:
    """Items, outputs and ratings of the user study (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        from refcoco_edit.store import BlobStore

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._conn.executescript(_SCHEMA)
        self.blobs = BlobStore(Path(f"{self.path}.blobs"))
        self.blobs.ensure()
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ items
    def add_item(self, item_id: str, source: Any, prompt: str, outputs: dict[str, Any], *,
                 referring_spans: list | None = None, edit_spans: list | None = None) -> None:
        if not item_id or not isinstance(item_id, str):
            raise InputError("a study item needs an item_id")
        if not prompt or not prompt.strip():
            raise InputError(f"study item {item_id}: empty prompt")
        if not 2 <= len(outputs) <= MAX_METHODS:
            raise InputError(f"study item {item_id}: needs 2 to {MAX_METHODS} method outputs, got {len(outputs)}")
        src = self.blobs.put(source)
        outs = {m: self.blobs.put(im) for m, im in outputs.items()}
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(
                    "INSERT INTO items (item_id, source, prompt, referring_spans, edit_spans, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (item_id, src, prompt, json.dumps(referring_spans or []), json.dumps(edit_spans or []), _now()))
                self._conn.executemany("INSERT INTO outputs (item_id, method, image) VALUES (?, ?, ?)",
                                       [(item_id, m, h) for m, h in outs.items()])
                self._conn.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._conn.execute("ROLLBACK")
                raise InputError(f"study item {item_id!r} is already stored") from None
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def import_manifest(self, manifest: Path | str, *, max_pixels: int | None = None) -> int:
        """Add every item of a JSON-lines manifest (see the module docstring); the number added."""
        from annotation_app.uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, read_upload

        manifest = Path(manifest)
        try:
            lines = manifest.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DataError(f"cannot read {manifest}: {exc}") from None
        base = manifest.parent
        added = 0
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                item_id, prompt, outs = str(d["item_id"]), str(d["prompt"]), dict(d["outputs"])
                source_path = d["source"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{manifest}:{n}: expected item_id, source, prompt, outputs: {exc}") from None

            def load(p: str) -> Any:
                return read_upload(base / p, upload_root=None, max_bytes=MAX_UPLOAD_BYTES,
                                   max_pixels=max_pixels or MAX_UPLOAD_PIXELS)

            self.add_item(item_id, load(source_path), prompt, {m: load(p) for m, p in outs.items()},
                          referring_spans=d.get("referring_spans"), edit_spans=d.get("edit_spans"))
            added += 1
        return added

    def item_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT item_id FROM items ORDER BY item_id")]

    def methods(self, item_id: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT method FROM outputs WHERE item_id = ? ORDER BY method",
                                                     (item_id,))]

    def rated_items(self, rater: str) -> set[str]:
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT DISTINCT item_id FROM ratings WHERE rater = ?", (rater,))}

    def counts(self, rater: str) -> tuple[int, int]:
        """(items this rater has rated, items in the study)."""
        return len(self.rated_items(rater)), len(self.item_ids())

    def next_item_id(self, rater: str) -> str | None:
        """An item the rater has not rated yet, in an order shuffled per rater; None when done."""
        left = [i for i in self.item_ids() if i not in self.rated_items(rater)]
        if not left:
            return None
        random.Random(f"order\x00{rater}").shuffle(left)
        return left[0]

    def item(self, item_id: str, rater: str) -> StudyItem:
        with self._lock:
            row = self._conn.execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()
            outs = dict(self._conn.execute("SELECT method, image FROM outputs WHERE item_id = ?",
                                           (item_id,)).fetchall())
        if row is None:
            raise InputError(f"no study item {item_id!r}")
        order = shown_order(list(outs), rater, item_id)
        return StudyItem(item_id, self.blobs.get(row["source"]), row["prompt"], json.loads(row["referring_spans"]),
                         json.loads(row["edit_spans"]),
                         [ShownOutput(SLOT_LABELS[i], m, self.blobs.get(outs[m])) for i, m in enumerate(order)])

    # ------------------------------------------------------------------ ratings
    def rate(self, rater: str, item_id: str, scores: dict[str, tuple[int, int]]) -> None:
        """Record one rater's (quality, consistency) for every method of an item, all at once.

        `scores` is keyed by method. Every method must be scored, each score an integer 1-5; a
        rater rates an item once (a second submission is refused)."""
        methods = self.methods(item_id)
        if not methods:
            raise InputError(f"no study item {item_id!r}")
        if set(scores) != set(methods):
            missing = sorted(set(methods) - set(scores))
            raise InputError(f"score every output of the item (missing: {', '.join(missing) or 'none'})")
        clean: dict[str, tuple[int, int]] = {}
        for m, pair in scores.items():
            try:
                q, c = (int(v) for v in pair)
                if any(float(v) != int(v) for v in pair):
                    raise ValueError
            except (TypeError, ValueError):
                raise InputError(f"scores must be whole numbers 1-5, got {pair!r}") from None
            if q not in SCORES or c not in SCORES:
                raise InputError(f"scores must be 1-5, got quality {q} and consistency {c}")
            clean[m] = (q, c)
        order = shown_order(methods, rater, item_id)
        stamp = _now()
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT INTO ratings (rater, item_id, method, position, quality, consistency, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(rater, item_id, m, order.index(m), q, c, stamp) for m, (q, c) in clean.items()])
                self._conn.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._conn.execute("ROLLBACK")
                raise InputError(f"{rater} has already rated item {item_id}") from None
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def ratings(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._conn.execute(
                "SELECT rater, item_id, method, position, quality, consistency, created_at FROM ratings "
                "ORDER BY item_id, method, rater")]

    # ------------------------------------------------------------------ export
    def summary(self, *, resamples: int = BOOTSTRAP, seed: int = 0) -> list[MethodSummary]:
        """Per method: mean quality and consistency with cluster-bootstrap 95% intervals."""
        rows = self.ratings()
        by_method: dict[str, dict[str, dict[str, list[int]]]] = {}
        raters: dict[str, set[str]] = {}
        for r in rows:
            per_item = by_method.setdefault(r["method"], {})
            cell = per_item.setdefault(r["item_id"], {"quality": [], "consistency": []})
            cell["quality"].append(r["quality"])
            cell["consistency"].append(r["consistency"])
            raters.setdefault(r["method"], set()).add(r["rater"])
        out = []
        for method in sorted(by_method):
            items = by_method[method]
            keys = sorted(items)
            q = cluster_bootstrap_ci([np.array(items[k]["quality"]) for k in keys], resamples=resamples, seed=seed)
            c = cluster_bootstrap_ci([np.array(items[k]["consistency"]) for k in keys], resamples=resamples,
                                     seed=seed)
            out.append(MethodSummary(method, sum(len(items[k]["quality"]) for k in keys), len(keys),
                                     len(raters[method]), *q, *c))
        return out

    def export_csv(self, **kwargs: Any) -> str:
        """The summary as CSV text (one row per method)."""
        buf = io.StringIO()
        rows = [asdict(s) for s in self.summary(**kwargs)]
        fields = list(MethodSummary.__dataclass_fields__)
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
        return buf.getvalue()
