"""The samples a run scores: a RefCOCO-Edit dataset (a folder, a Hub id, or `sample`), its split and
limit, read one sample at a time.

`--dataset sample` builds the RefShapes RefCOCO-Edit once into the cache
(`<cache>/datasets/refshapes-edit-v1`, RefShapes ground-truth edits through the store and export
code) and reuses it; concurrent processes may race to build it, and the loser keeps the winner's.

A dataset may come from anyone: its images are decoded through `refcoco_edit.imaging.files.open_image`
(the pixel limit), never by `datasets`, and a cell that names a file is read only inside the dataset's
folder (`Selection.root`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.run.provenance import dataset_fingerprint
from refcoco_edit.errors import DataError, InputError
from refcoco_edit.imaging.files import inside, open_image
from refcoco_edit.io import atomic_dir

if TYPE_CHECKING:
    import datasets

    from refcoco_edit.schema import Sample

logger = logging.getLogger(__name__)

SAMPLE_DATASET = "sample"
SAMPLE_DATASET_DIR = "refshapes-edit-v1"


def sample_dataset_dir() -> Path:
    from refcoco_edit.settings import cache_dir

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
        card = CardInfo()
        card.source = "RefShapes sample with its exact ground-truth edits (rie-bench --dataset sample)"
        try:
            with atomic_dir(folder) as staged:
                export_store(store_path, staged, card=card)
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
    dataset: datasets.Dataset
    ids: list[str]
    splits: list[str]
    _raw: datasets.Dataset | None = field(default=None, repr=False)  # images undecoded, for `sample`

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def root(self) -> Path | None:
        """The dataset's folder (None for a Hub id): the only place an image cell naming a file is read."""
        path = Path(self.source)
        return path if path.is_dir() else None

    def sample(self, index: int) -> Sample:
        from refcoco_edit.dataset.io import row_to_sample, undecoded

        if self._raw is None:
            self._raw = undecoded(self.dataset)
        return row_to_sample(self._raw[int(index)], self._raw.features, root=self.root)

    def source_sizes(self) -> dict[str, tuple[int, int]]:
        """sample id -> (width, height) of its source image, read from the image headers only (each
        within the pixel limit, a file it names inside the dataset's folder)."""
        from datasets import Image as ImageFeature

        raw = self.dataset.select_columns(["sample_id", "source_image"]).cast_column(
            "source_image", ImageFeature(decode=False))
        root = self.root
        sizes = {}
        for row in raw:
            what = f"sample {row['sample_id']}: source_image"
            cell = row["source_image"] or {}
            data = cell.get("bytes")
            if data is None:
                if root is None or not cell.get("path"):
                    raise DataError(f"{what}: the cell holds no image bytes (only a path, read only from a "
                                    "dataset folder)")
                data = inside(root, cell["path"], what=what)
            with open_image(data, what=what, mode=None, load=False) as im:
                sizes[row["sample_id"]] = im.size
        return sizes

    def fingerprint(self) -> str:
        """The selected samples' content hash (`provenance.dataset_fingerprint`): two runs with the
        same fingerprint scored the same samples, whatever copy they were read from."""
        return dataset_fingerprint(self.dataset)


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
