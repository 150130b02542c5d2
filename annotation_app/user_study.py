"""The user study (the paper's Table 3): raters score the outputs of several editing methods.

Each study item is a source image, its prompt and one output per method. A rater sees the outputs
of an item in an order shuffled for that rater and item, labelled A, B, C ... (method names hidden),
and answers the paper's two questions about each, 1 (bad) to 5 (excellent):

- `quality`: the image quality of the edited image (does it look right and real);
- `prompt_consistency`: the consistency of the edited image with the prompt (does it do what the
  prompt asks);

and, where the study's option `preservation` is on, a third one:

- `preservation`: is everything the prompt did not ask to change left as it was.

The export gives, per method and question, the mean with a 95% confidence interval.

Why a cluster bootstrap for the intervals: the scores of one item are not independent (a hard
prompt lowers every method's score on it, and several raters score the same output), so items, not
single scores, are resampled: `B` times, draw as many items as there are, with replacement, and take
the mean of all scores of the drawn items; the interval is the 2.5th and 97.5th percentile of those
means. With a fixed seed the export is reproducible.

Stored apart from the annotation store (which has no table for it), in `<store>.study.sqlite` with
its images in `<store>.study.sqlite.blobs/`, written with the store's content-addressed image writer.
The ratings table has one column per question, named by its key. Stores written before the
questions were named (schema version 0) had a column `consistency` that asked whether the rest
stayed unchanged: opening such a store moves those scores to `preservation` (their meaning), leaves
`prompt_consistency` empty for them (it was never asked) and, when it holds ratings, turns the
`preservation` option on so that the study goes on asking what it asked before.

Items come from a JSON-lines manifest, one item per line:
`{"item_id": "...", "source": "src.png", "prompt": "...", "outputs": {"method": "out.png", ...}}`
(optional "referring_spans" and "edit_spans"); image paths are relative to the manifest. A line
`{"options": {"preservation": true}}` sets the study's options.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import sqlite3
import string
import threading
from collections.abc import Mapping, Sequence
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
MAX_METHODS = 8  # output slots one item may have (the page lays out this many)
SLOT_LABELS = string.ascii_uppercase[:MAX_METHODS]
BOOTSTRAP = 2000
CONFIDENCE = 0.95
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Question:
    """One question a rater answers about every output, 1-5; `key` names its column and CSV fields."""

    key: str
    label: str
    text: str
    option: str | None = None  # the study option that turns it on; None: always asked


QUESTIONS = (
    Question("quality", "Image quality", "Does the edited image look right and real?"),
    Question("prompt_consistency", "Consistency with the prompt", "Does the edited image do what the prompt asks?"),
    Question("preservation", "Rest unchanged", "Is everything the prompt did not ask to change left as it was?",
             option="preservation"),
)
QUESTION_KEYS = tuple(q.key for q in QUESTIONS)
OPTIONS = {"preservation": False}  # the study options and their defaults

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, source TEXT NOT NULL, prompt TEXT NOT NULL,
    referring_spans TEXT NOT NULL DEFAULT '[]', edit_spans TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outputs (
    item_id TEXT NOT NULL REFERENCES items(item_id), method TEXT NOT NULL, image TEXT NOT NULL,
    PRIMARY KEY (item_id, method));
CREATE TABLE IF NOT EXISTS options (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# prompt_consistency is empty only in ratings made before it was asked (schema 0); preservation is
# empty where the study did not ask it
_RATINGS = """
CREATE TABLE {name} (
    rater TEXT NOT NULL, item_id TEXT NOT NULL, method TEXT NOT NULL, position INTEGER NOT NULL,
    quality INTEGER NOT NULL CHECK (quality BETWEEN 1 AND 5),
    prompt_consistency INTEGER CHECK (prompt_consistency BETWEEN 1 AND 5),
    preservation INTEGER CHECK (preservation BETWEEN 1 AND 5),
    created_at TEXT NOT NULL,
    PRIMARY KEY (rater, item_id, method),
    FOREIGN KEY (item_id, method) REFERENCES outputs(item_id, method))
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
    """One method's results: counts, then per question the mean, its 95% interval and its number of
    scores (a question asked of only some ratings has fewer)."""

    method: str
    ratings: int
    items: int
    raters: int
    quality_mean: float
    quality_low: float
    quality_high: float
    quality_ratings: int
    prompt_consistency_mean: float
    prompt_consistency_low: float
    prompt_consistency_high: float
    prompt_consistency_ratings: int
    preservation_mean: float
    preservation_low: float
    preservation_high: float
    preservation_ratings: int


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
        self._lock = threading.RLock()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise
        self.blobs = BlobStore(Path(f"{self.path}.blobs"))
        self.blobs.ensure()

    def _migrate(self) -> None:
        """Bring the ratings table to `SCHEMA_VERSION` (see the module docstring for version 0)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cols = [r[1] for r in self._conn.execute("PRAGMA table_info(ratings)")]
                if not cols:
                    self._conn.execute(_RATINGS.format(name="ratings"))
                elif "consistency" in cols and "preservation" not in cols:
                    self._conn.execute(_RATINGS.format(name="ratings_v2"))
                    self._conn.execute(
                        "INSERT INTO ratings_v2 (rater, item_id, method, position, quality, prompt_consistency, "
                        "preservation, created_at) SELECT rater, item_id, method, position, quality, NULL, "
                        "consistency, created_at FROM ratings")
                    moved = self._conn.execute("SELECT COUNT(*) FROM ratings_v2").fetchone()[0]
                    self._conn.execute("DROP TABLE ratings")
                    self._conn.execute("ALTER TABLE ratings_v2 RENAME TO ratings")
                    if moved:
                        self._conn.execute("INSERT OR REPLACE INTO options (key, value) VALUES ('preservation', '1')")
                    log.info("%s: %d rating(s) moved from `consistency` to `preservation`", self.path, moved)
                elif set(QUESTION_KEYS) - set(cols):
                    raise DataError(f"{self.path}: ratings table has columns {cols}, not the study's questions")
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ options
    def options(self) -> dict[str, bool]:
        """The study's options (`OPTIONS` with what was set)."""
        with self._lock:
            stored = dict(self._conn.execute("SELECT key, value FROM options").fetchall())
        return {k: stored.get(k, "1" if v else "0") == "1" for k, v in OPTIONS.items()}

    def set_options(self, **options: bool) -> None:
        """Set study options, e.g. `preservation=True` to ask the third question from now on."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise InputError(f"unknown study option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        for k, v in options.items():
            if not isinstance(v, bool):
                raise InputError(f"study option {k} is true or false, got {v!r}")
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO options (key, value) VALUES (?, ?)",
                                   [(k, "1" if v else "0") for k, v in options.items()])

    def questions(self) -> list[Question]:
        """The questions raters answer now: the paper's two, and those the options turn on."""
        on = self.options()
        return [q for q in QUESTIONS if q.option is None or on[q.option]]

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
                if isinstance(d, dict) and set(d) == {"options"}:
                    if not isinstance(d["options"], dict):
                        raise TypeError("options is an object")
                    self.set_options(**d["options"])
                    continue
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
    def rate(self, rater: str, item_id: str, scores: dict[str, Mapping[str, Any] | Sequence[Any]]) -> None:
        """Record one rater's answers for every method of an item, all at once.

        `scores` is keyed by method; each value maps question keys to scores, or lists the scores of
        the asked questions (`questions()`) in order. Every method must be scored on every asked
        question, each score a whole number 1-5; a rater rates an item once (a second submission is
        refused)."""
        methods = self.methods(item_id)
        if not methods:
            raise InputError(f"no study item {item_id!r}")
        if set(scores) != set(methods):
            missing = sorted(set(methods) - set(scores))
            raise InputError(f"score every output of the item (missing: {', '.join(missing) or 'none'})")
        asked = [q.key for q in self.questions()]
        clean = {m: self._check_scores(answers, asked) for m, answers in scores.items()}
        order = shown_order(methods, rater, item_id)
        stamp = _now()
        cols = ", ".join(QUESTION_KEYS)
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    f"INSERT INTO ratings (rater, item_id, method, position, {cols}, created_at) "
                    f"VALUES (?, ?, ?, ?, {', '.join('?' * len(QUESTION_KEYS))}, ?)",
                    [(rater, item_id, m, order.index(m), *(a.get(k) for k in QUESTION_KEYS), stamp)
                     for m, a in clean.items()])
                self._conn.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._conn.execute("ROLLBACK")
                raise InputError(f"{rater} has already rated item {item_id}") from None
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _check_scores(answers: Mapping[str, Any] | Sequence[Any], asked: list[str]) -> dict[str, int]:
        """One output's answers as {question: 1-5}, exactly the asked questions."""
        if isinstance(answers, Mapping):
            given = dict(answers)
        elif isinstance(answers, Sequence) and not isinstance(answers, str):
            if len(answers) != len(asked):
                raise InputError(f"expected {len(asked)} scores ({', '.join(asked)}), got {len(answers)}")
            given = dict(zip(asked, answers, strict=True))
        else:
            raise InputError(f"scores are a mapping or a list, got {answers!r}")
        extra = sorted(set(given) - set(asked))
        if extra:
            raise InputError(f"the study does not ask {', '.join(extra)} (it asks {', '.join(asked)})")
        out = {}
        for k in asked:
            v = given.get(k)
            if v is None:
                raise InputError(f"missing the score for {k}")
            try:
                n = int(v)
                if isinstance(v, bool) or float(v) != n:
                    raise ValueError
            except (TypeError, ValueError):
                raise InputError(f"scores must be whole numbers 1-5, got {k} = {v!r}") from None
            if n not in SCORES:
                raise InputError(f"scores must be 1-5, got {k} = {n}")
            out[k] = n
        return out

    def ratings(self) -> list[dict]:
        """Every stored rating: rater, item, method, shown position, one score per question (None
        where it was not asked), time."""
        with self._lock:
            return [dict(r) for r in self._conn.execute(
                f"SELECT rater, item_id, method, position, {', '.join(QUESTION_KEYS)}, created_at FROM ratings "
                "ORDER BY item_id, method, rater")]

    # ------------------------------------------------------------------ export
    def summary(self, *, resamples: int = BOOTSTRAP, seed: int = 0) -> list[MethodSummary]:
        """Per method and question: the mean with a cluster-bootstrap 95% interval, over the ratings
        that answer it."""
        rows = self.ratings()
        by_method: dict[str, dict[str, dict[str, list[int]]]] = {}
        raters: dict[str, set[str]] = {}
        for r in rows:
            per_item = by_method.setdefault(r["method"], {})
            cell = per_item.setdefault(r["item_id"], {k: [] for k in QUESTION_KEYS})
            for k in QUESTION_KEYS:
                if r[k] is not None:
                    cell[k].append(r[k])
            raters.setdefault(r["method"], set()).add(r["rater"])
        out = []
        for method in sorted(by_method):
            items = by_method[method]
            keys = sorted(items)
            per_question: list[Any] = []
            for k in QUESTION_KEYS:
                groups = [np.array(items[i][k]) for i in keys]
                per_question += [*cluster_bootstrap_ci(groups, resamples=resamples, seed=seed),
                                 sum(len(g) for g in groups)]
            out.append(MethodSummary(method, sum(1 for r in rows if r["method"] == method), len(keys),
                                     len(raters[method]), *per_question))
        return out

    def export_csv(self, **kwargs: Any) -> str:
        """The summary as CSV text (one row per method; an empty cell where a question has no scores)."""
        buf = io.StringIO()
        rows = [asdict(s) for s in self.summary(**kwargs)]
        fields = list(MethodSummary.__dataclass_fields__)
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (("" if math.isnan(v) else f"{v:.4f}") if isinstance(v, float) else v)
                        for k, v in r.items()})
        return buf.getvalue()
