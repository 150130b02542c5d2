"""What every handler works with: the store, the RefCOCO data, the queue, the pipelines, uploads and
the user study, opened once per app process and shared by all sessions.

The RefCOCO images, object masks and selection verdicts are cached here (bounded), so that the
frequent actions (next item, pick an object) do not re-read files; loaded pipelines are kept, one per
name, and a pipeline runs one request at a time.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from annotation_app.errors import AppError
from annotation_app.render import ObjectMask
from annotation_app.uploads import LIMITS as UPLOAD_LIMITS

if TYPE_CHECKING:
    from refcoco_edit.pipelines.capabilities import EditPipeline

log = logging.getLogger(__name__)



def pipeline_labels() -> dict[str, str]:
    """What the pipeline radio offers, in registry order: every pipeline that declares a label."""
    from refcoco_edit.pipelines import pipeline_class, pipeline_names

    classes = {n: pipeline_class(n) for n in pipeline_names()}
    return {n: cls.label for n, cls in classes.items() if cls.label}


# Read from the pipelines' classes (their modules import no torch).
PIPELINE_LABELS: dict[str, str] = pipeline_labels()


@dataclass
class AppConfig:
    """How the app is set up; `refcoco-edit app` fills it from its flags."""

    store_path: Path
    refcoco: str = "sample"  # REFER root, or "sample" for the bundled RefShapes copy
    dataset: str | None = None
    split_by: str | None = None
    images: str | None = None
    split: str | None = None  # only refs of this split go to the queue
    candidates_file: Path | None = None  # JSON lines of `refcoco-edit candidates --json`
    include_ineligible: bool = False  # queue every ref, not only those the selection rules accept
    pipeline_models: dict[str, str] = field(default_factory=dict)  # pipeline -> model name
    model_overrides: dict[str, str] = field(default_factory=dict)  # resolver overrides
    device: str | None = None
    assignment_ttl_s: float = 30 * 60.0
    max_candidates: int = 8
    default_steps: int = 50
    llm: Any = None  # refcoco_edit.text.llm.LLMSettings, or None for the offline rephraser
    max_upload_bytes: int = UPLOAD_LIMITS.max_bytes  # uploads.UploadLimits holds every upload limit
    max_upload_pixels: int = UPLOAD_LIMITS.max_pixels
    durable: bool = True


class AppContext:
    """Shared by all sessions; every method is safe to call from several request threads."""

    def __init__(self, config: AppConfig, *, store=None, data=None, verdicts: dict[int, Any] | None = None,
                 pipeline_factory: Callable[[str, str | None], Any] | None = None) -> None:
        from annotation_app.queue import WorkQueue
        from annotation_app.uploads import UploadStore
        from annotation_app.user_study import StudyStore
        from refcoco_edit.refer.reader import RefCOCO
        from refcoco_edit.store import Store

        self.config = config
        self.store = store if store is not None else Store.open(config.store_path, durable=config.durable)
        self.data = data if data is not None else RefCOCO.load(config.refcoco, config.dataset, config.split_by,
                                                               images=config.images)
        self.uploads = UploadStore(self.store.path)
        self.study = StudyStore(Path(f"{self.store.path}.study.sqlite"))
        self._pipeline_factory = pipeline_factory or self._load_pipeline
        self._pipelines: dict[str, Any] = {}
        self._pipeline_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.verdicts = dict(verdicts) if verdicts is not None else self._verdicts()
        wanted = [r for r in self.scope_ref_ids()
                  if config.include_ineligible or (r in self.verdicts and self.verdicts[r].eligible)]
        queue_refs = spread_by_image(wanted, lambda r: int(self.data.ref(r)["image_id"]))
        self._local = threading.local()
        self._readers: list[Any] = []
        self.queue = WorkQueue(self.store, queue_refs, ttl_s=config.assignment_ttl_s, reads=lambda: self.reads)
        self._rephraser = None
        # per-context caches (a cache on the class would keep every closed context alive)
        self.image = functools.lru_cache(maxsize=64)(self._image)
        self.ann_mask = functools.lru_cache(maxsize=1024)(self._ann_mask)
        self.objects = functools.lru_cache(maxsize=64)(self._objects)
        log.info("app: %d refs in the queue (of %d in scope), store %s", len(queue_refs), len(self.scope_ref_ids()),
                 self.store.path)

    def close(self) -> None:
        self.study.close()
        with self._lock:
            for r in self._readers:
                r.close()
            self._readers.clear()
        self.store.close()

    @property
    def reads(self):
        """This thread's own connection to the store, for reads. `Store` serialises the calls on one
        connection with a lock, which a write holds through its commit (an fsync in durable mode);
        in WAL mode readers on other connections need not wait for a writer, so page views and role
        checks of other sessions go on while someone saves."""
        from refcoco_edit.store import Store

        reader = getattr(self._local, "store", None)
        if reader is None:
            reader = Store.open(self.store.path, create=False, durable=self.config.durable)
            self._local.store = reader
            with self._lock:
                self._readers.append(reader)
        return reader

    # ------------------------------------------------------------------ data
    def scope_ref_ids(self) -> list[int]:
        return self.data.ref_ids(split=self.config.split)

    def _verdicts(self) -> dict[int, Any]:
        """The selection rules' verdict of every ref in scope, from a file when one was given."""
        from refcoco_edit.curation.selection import Candidate, select_candidates

        if self.config.candidates_file is not None:
            import json

            from refcoco_edit.errors import DataError

            out = {}
            path = Path(self.config.candidates_file)
            try:
                for _n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                    if line.strip():
                        d = json.loads(line)
                        out[int(d["ref_id"])] = Candidate(**d)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}: not a `refcoco-edit candidates --json` file: {exc}") from None
            return out
        return {c.ref_id: c for c in select_candidates(self.data, self.scope_ref_ids())}

    def verdict(self, ref_id: int):
        v = self.verdicts.get(int(ref_id))
        if v is None:
            from refcoco_edit.curation.selection import select_candidates

            v = select_candidates(self.data, [int(ref_id)])[0]
            with self._lock:
                self.verdicts[int(ref_id)] = v
        return v

    def _image(self, image_id: int):
        return self.data.load_image(int(image_id))

    def _ann_mask(self, ann_id: int) -> np.ndarray:
        m = self.data.ann_mask(int(ann_id))
        m.setflags(write=False)
        return m

    def _objects(self, image_id: int) -> tuple[ObjectMask, ...]:
        """Every annotated object of an image with its mask and ref (None when it has none)."""
        out = []
        for ann in self.data.image_anns(int(image_id)):
            ref = self.data.ann_ref(ann["id"])
            out.append(ObjectMask(int(ann["id"]), self.ann_mask(int(ann["id"])),
                                  None if ref is None else int(ref["ref_id"])))
        return tuple(out)

    def category_name(self, category_id: int) -> str:
        try:
            return str(self.data.category(int(category_id))["name"])
        except Exception:  # noqa: BLE001 - a missing category only loses a label
            return str(category_id)

    # ------------------------------------------------------------------ pipelines
    def pipeline_names(self) -> list[str]:
        from refcoco_edit.pipelines import pipeline_names

        return [n for n in pipeline_names() if n in PIPELINE_LABELS]

    def pipeline_class(self, name: str) -> type[EditPipeline]:
        """The class of pipeline `name`: what it needs and how a request becomes its arguments."""
        from refcoco_edit.pipelines import pipeline_class

        return pipeline_class(name)

    def pipeline_model(self, name: str) -> str | None:
        return self.config.pipeline_models.get(name)

    def _load_pipeline(self, name: str, model: str | None):
        from refcoco_edit.pipelines import get_pipeline

        return get_pipeline(name, model=model, overrides=self.config.model_overrides, device=self.config.device,
                            progress=True)

    def pipeline(self, name: str):
        """The loaded pipeline `name` (loaded on first use) and the lock its runs must hold."""
        if name not in self.pipeline_names():
            raise AppError(f"unknown pipeline {name!r}; choose one of {', '.join(self.pipeline_names())}")
        with self._lock:
            lock = self._pipeline_locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._pipelines:
                log.info("loading pipeline %s (model %s)", name, self.pipeline_model(name) or "default")
                self._pipelines[name] = self._pipeline_factory(name, self.pipeline_model(name))
        return self._pipelines[name], lock

    # ------------------------------------------------------------------ rephrasings
    @property
    def rephraser(self):
        if self._rephraser is None:
            from refcoco_edit.text.llm import make_rephraser

            self._rephraser = make_rephraser(self.config.llm)
        return self._rephraser

    @rephraser.setter
    def rephraser(self, value) -> None:
        self._rephraser = value


def spread_by_image(ref_ids: list[int], image_of: Callable[[int], int]) -> list[int]:
    """Queue order: the first ref of every image, then the second of every image, and so on, so that
    annotators working at the same time get different images instead of neighbouring refs of one."""
    by_image: dict[int, list[int]] = {}
    for r in ref_ids:
        by_image.setdefault(image_of(r), []).append(r)
    out: list[int] = []
    for k in range(max((len(v) for v in by_image.values()), default=0)):
        out += [refs[k] for refs in by_image.values() if k < len(refs)]
    return out


def parse_pipeline_models(items: list[str] | None, known: Mapping[str, str] = PIPELINE_LABELS) -> dict[str, str]:
    """`["region_edit=tiny-sd15", ...]` -> {pipeline: model}; unknown pipelines are refused."""
    from refcoco_edit.errors import InputError

    out: dict[str, str] = {}
    for item in items or ():
        name, sep, model = item.partition("=")
        name, model = name.strip(), model.strip()
        if not sep or not name or not model:
            raise InputError(f"--pipeline-model expects PIPELINE=MODEL, got {item!r}")
        if name not in known:
            raise InputError(f"--pipeline-model {item!r}: unknown pipeline {name!r}; known: {', '.join(known)}")
        out[name] = model
    return out
