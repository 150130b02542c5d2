"""Reading and writing RefCOCO-Edit rows: `Sample` <-> Hugging Face row, and one loader for every copy.

The exported dataset (see `export.py`) stores images as PNG bytes in `Image()` columns, masks as
8-bit "L" PNGs of 0 and 255 (not 1-bit PNGs: every image viewer and the Hub's viewer show 0/255
masks as black and white, while a 0/1 mask looks all black), spans as lists of [start, end) pairs,
`edit_type` and `pipeline` as `ClassLabel`s and `generation` as a JSON string. This module turns a
`Sample` into such a row and back (masks back to 0/1 uint8 arrays), so the exporter, the trainer and
the benchmark agree on one encoding.

    from refcoco_edit.dataset.io import load_refcoco_edit, SampleView
    ds = load_refcoco_edit("out/refcoco-edit", split="val")   # a datasets.Dataset
    for sample in SampleView(ds):                              # refcoco_edit.schema.Sample
        ...

A dataset may come from anyone: `SampleView` and `iter_samples` read image and mask cells undecoded
(`undecoded`) and decode them here through `refcoco_edit.imaging.files.open_image`, so the pixel limit
holds (a 12000x9000 PNG of a few hundred kilobytes is refused from its header) and `datasets` never
follows a path or URL that a cell names. A cell that names a file instead of holding bytes is read only
inside the dataset's folder (`root`), never elsewhere.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refcoco_edit.errors import DataError, InputError
from refcoco_edit.imaging.files import check_pixels, inside, open_image
from refcoco_edit.io import json_default
from refcoco_edit.schema import EDIT_TYPES, IMAGE_FIELDS, MASK_FIELDS, PIPELINES, Sample

# Folder of the `save_to_disk` copy inside an exported dataset folder (beside data/ and README.md).
SAVE_TO_DISK_DIR = "hf"
CLASS_LABEL_FIELDS: dict[str, tuple[str, ...]] = {"edit_type": EDIT_TYPES, "pipeline": PIPELINES}
SPAN_FIELDS = ("referring_spans", "edit_spans")
INT_FIELDS = ("image_id", "ref_id", "ann_id")


# ---------------------------------------------------------------------------- images and masks
def encode_image_png(image: Any) -> bytes:
    """PNG bytes of a PIL image (or uint8 array): lossless, so pixels survive the export exactly."""
    from PIL import Image

    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A 0/1 mask as an 8-bit "L" PNG of 0 and 255 (viewers show it; `decode_mask` reads it back)."""
    from PIL import Image

    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"a mask must be 2-D, got shape {m.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.where(m > 0, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _open_png(value: Any, *, what: str = "image cell", root: Path | str | None = None):
    """A PIL image from what a dataset row may hold: a PIL image, {"bytes", "path"}, bytes or a path.

    Every encoded image goes through `open_image` (the pixel limit); a path is read only inside `root`
    (the dataset's folder) and refused when there is none."""
    from PIL import Image

    if isinstance(value, Image.Image):
        check_pixels(*value.size, what)
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise DataError(f"{what}: the cell holds neither bytes nor a path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return open_image(bytes(value), what=what, mode=None)
    if not isinstance(value, (str, Path)):
        raise DataError(f"{what}: the cell holds {type(value).__name__}, not an image")
    if root is None:
        raise DataError(f"{what}: the cell names a file ({value}) instead of holding the image; such files are "
                        "read only from a dataset folder")
    return open_image(inside(root, value, what=what), what=what, mode=None)


def decode_image(value: Any, *, what: str = "image cell", root: Path | str | None = None):
    """An image cell as a loaded PIL image (mode as stored, normally RGB), within the pixel limit;
    `what` names it in errors, `root` is the folder a path cell must stay in."""
    return _open_png(value, what=what, root=root)


def decode_mask(value: Any, *, what: str = "mask cell", root: Path | str | None = None) -> np.ndarray:
    """A mask cell (0/255 "L" image, 0/1 array, PIL, bytes) as a (H, W) uint8 array of 0 and 1."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        im = _open_png(value, what=what, root=root)
        arr = np.asarray(im.convert("L") if im.mode not in ("L", "1") else im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    # 0/255 PNGs from the export; 0/1 arrays given directly are kept as they are
    threshold = 127 if arr.max(initial=0) > 1 else 0
    return (arr > threshold).astype(np.uint8)


# ---------------------------------------------------------------------------- rows
def sample_to_row(sample: Sample, *, png: dict[str, bytes] | None = None) -> dict[str, Any]:
    """A `Sample` as a row for `schema.features().encode_example`: images and masks as PNG bytes.

    `png` may give the PNG bytes of image fields already at hand (the store's blobs), so they are
    copied instead of decoded and re-encoded.
    """
    png = png or {}
    row: dict[str, Any] = {}
    for name in Sample.field_names():
        value = getattr(sample, name)
        if name in IMAGE_FIELDS:
            data = png.get(name)
            row[name] = {"bytes": data if data is not None else encode_image_png(value), "path": None}
        elif name in MASK_FIELDS:
            row[name] = {"bytes": encode_mask_png(value), "path": None}
        elif name == "generation":
            row[name] = json.dumps(value or {}, ensure_ascii=False, sort_keys=True, default=json_default)
        elif name in SPAN_FIELDS:
            row[name] = [[int(s), int(e)] for s, e in value]
        elif name in INT_FIELDS:
            row[name] = int(value)
        else:
            row[name] = "" if value is None else str(value)
    return row



def _label(name: str, value: Any, features: Any = None) -> str:
    if isinstance(value, str):
        return value
    names = CLASS_LABEL_FIELDS[name]
    if features is not None and name in features and hasattr(features[name], "names"):
        names = tuple(features[name].names)
    try:
        return names[int(value)]
    except (IndexError, TypeError, ValueError):
        raise DataError(f"{name} label {value!r} is not one of 0..{len(names) - 1}") from None


def row_to_sample(row: dict[str, Any], features: Any = None, *, root: Path | str | None = None) -> Sample:
    """A dataset row (decoded or not) as a `Sample`: PIL images, 0/1 masks, label names, dict generation.

    `features` (the dataset's) names the class labels; without it the schema's order is used, which is
    the order the export writes. `root` is the dataset's folder, the only place a cell naming a file
    may be read from (none: such cells are refused).
    """
    kwargs: dict[str, Any] = {}
    sid = row.get("sample_id", "?")
    for name in Sample.field_names():
        if name not in row:
            if name in ("created_at", "updated_at", "reviewer", "annotator", "target"):
                kwargs[name] = ""
                continue
            raise DataError(f"row has no field {name!r}")
        value = row[name]
        if name in IMAGE_FIELDS:
            kwargs[name] = decode_image(value, what=f"sample {sid}: {name}", root=root)
        elif name in MASK_FIELDS:
            kwargs[name] = decode_mask(value, what=f"sample {sid}: {name}", root=root)
        elif name in CLASS_LABEL_FIELDS:
            kwargs[name] = _label(name, value, features)
        elif name == "generation":
            kwargs[name] = json.loads(value) if isinstance(value, str) and value else (value or {})
        elif name in SPAN_FIELDS:
            kwargs[name] = [[int(s), int(e)] for s, e in value]
        elif name in INT_FIELDS:
            kwargs[name] = int(value)
        else:
            kwargs[name] = "" if value is None else value
    return Sample(**kwargs)


# ---------------------------------------------------------------------------- loading
def load_refcoco_edit(path_or_hub_id: str | Path, split: str | None = None, **kwargs: Any):
    """Load an exported RefCOCO-Edit dataset: a `DatasetDict`, or one split's `Dataset` when `split`.

    Accepts an export folder (its `hf/` save_to_disk copy is memory-mapped when present, else its
    parquet files are loaded), a `save_to_disk` folder itself, or a Hub dataset id. `kwargs` go to
    `datasets.load_dataset` (e.g. `streaming=True`, `revision=`).
    """
    import datasets

    p = Path(path_or_hub_id)
    if p.exists():
        if not p.is_dir():
            raise DataError(f"{p} is not a dataset folder")
        for folder in (p, p / SAVE_TO_DISK_DIR):
            if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
                if kwargs.get("streaming"):
                    break  # save_to_disk copies do not stream; the parquet files do
                ds = datasets.load_from_disk(str(folder))
                return _pick(ds, split, folder)
        ds = datasets.load_dataset(str(p), split=split, **kwargs)
        return ds
    if str(path_or_hub_id).startswith((".", "/")) or str(path_or_hub_id).count("/") > 1:
        raise DataError(f"no dataset at {path_or_hub_id}")
    return datasets.load_dataset(str(path_or_hub_id), split=split, **kwargs)


def _pick(ds: Any, split: str | None, where: Path):
    if split is None:
        return ds
    if hasattr(ds, "keys"):
        if split not in ds:
            raise InputError(f"{where} has no split {split!r}; it has: {', '.join(ds.keys())}")
        return ds[split]
    return ds


def undecoded(dataset: Any) -> Any:
    """`dataset` with its image and mask columns as undecoded {"bytes", "path"} cells, so that
    `row_to_sample` decodes them within the pixel limit instead of `datasets` (which has none, and
    opens any path or URL a cell names)."""
    from datasets import Image as ImageFeature

    features = getattr(dataset, "features", None) or {}
    for name in (*IMAGE_FIELDS, *MASK_FIELDS):
        feature = features.get(name)
        if isinstance(feature, ImageFeature) and feature.decode:
            dataset = dataset.cast_column(name, ImageFeature(decode=False))
    return dataset


def iter_samples(dataset: Any, *, root: Path | str | None = None) -> Iterator[Sample]:
    """Every row of a `Dataset` (or `IterableDataset`) as a `Sample`; `root`: see `row_to_sample`."""
    dataset = undecoded(dataset)
    features = getattr(dataset, "features", None)
    for row in dataset:
        yield row_to_sample(row, features, root=root)


class SampleView(Sequence):
    """A `Dataset` seen as a sequence of `Sample`s (random access for trainers, `len`, iteration);
    `root`: see `row_to_sample`."""

    def __init__(self, dataset: Any, *, root: Path | str | None = None) -> None:
        self.dataset = undecoded(dataset)
        self.features = self.dataset.features
        self.root = root

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("SampleView takes integer indices")
        return row_to_sample(self.dataset[int(index)], self.features, root=self.root)

    def __iter__(self) -> Iterator[Sample]:
        return iter_samples(self.dataset, root=self.root)
