"""The RefCOCO data layer: reads the REFER layout and indexes it.

Layout (as the RefCOCO family ships it)::

    ROOT/<dataset>/refs(<split_by>).p     Python 2 pickle: list of refs
    ROOT/<dataset>/instances.json         COCO instances of the referred images
    ROOT/images/mscoco/images/train2014/  the COCO images (or any folder given as `images`)

The indexes are the REFER API's (refs, anns, images, categories, image->refs, image->anns,
ref->ann, ann->ref, category->refs, sentence->ref) but built column-wise: each id column is pulled
out once into a numpy array; id look-ups are binary searches over the sorted ids and one-to-many
groupings are slices of one stable sort order. The build runs in C loops instead of one Python
dict append per record, and holds a few arrays instead of a dict entry per record (see
benchmarks/refer_index.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from refcoco_edit.errors import DataError, InputError
from refcoco_edit.refer.safe_pickle import gc_paused, safe_load

log = logging.getLogger(__name__)

# Which split_by each published dataset has; other dataset names accept whatever refs files exist.
KNOWN_SPLIT_BYS: dict[str, tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("google", "umd"),
    "refclef": ("unc", "berkeley"),
}
DEFAULT_IMAGE_SUBDIR = Path("images/mscoco/images/train2014")
# Bounds on what instances.json may make pycocotools do, checked before it is called: its C code
# multiplies sizes in 32 bits and allocates per polygon edge, so a crafted file could crash the
# process. A side of 16384 and the toolkit's one pixel limit are far above any COCO image.
MAX_SIDE = 16384
MAX_POLYGON_COORDS = 200_000  # all polygons of one object; COCO's largest has a few thousand
MAX_POLYGON_PERIMETER = 1_000_000  # pixels along the edges; pycocotools allocates 5 points a pixel
SAMPLE_ALIAS = "sample"


def refs_path(root: Path, dataset: str, split_by: str) -> Path:
    return Path(root) / dataset / f"refs({split_by}).p"


def resolve_root(root: Path | str) -> Path:
    """`sample` names the bundled RefShapes copy; anything else is a folder."""
    if str(root) == SAMPLE_ALIAS:
        from refcoco_edit.refshapes import sample_root

        return sample_root()
    return Path(root)


def infer_dataset(root: Path, dataset: str | None, split_by: str | None) -> tuple[str, str]:
    """Fill in `dataset` and `split_by` when the root holds exactly one choice of each."""
    if not root.is_dir():
        raise DataError(f"RefCOCO root not found: {root}")
    if dataset is None:
        found = sorted(p.parent.name for p in root.glob("*/instances.json"))
        if len(found) != 1:
            raise InputError(
                f"{root}: give --dataset; "
                + (f"found {', '.join(found)}" if found else "no <dataset>/instances.json under it")
            )
        dataset = found[0]
    if split_by is None:
        found = sorted(p.name[5:-3] for p in (root / dataset).glob("refs(*).p"))
        if len(found) != 1:
            raise InputError(
                f"{root / dataset}: give --split-by; "
                + (f"found {', '.join(found)}" if found else "no refs(<split_by>).p in it")
            )
        split_by = found[0]
    return dataset, split_by


def load_json(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as f, gc_paused():
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise DataError(f"{path}: not readable as JSON: {exc.__class__.__name__}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


@dataclass
class _Grouping:
    """key -> positions of the records that have it: one stable argsort, sliced on look-up."""

    keys: np.ndarray  # sorted unique keys
    starts: np.ndarray  # starts[i]:starts[i+1] slices `order` for keys[i]
    order: np.ndarray  # record positions sorted by key

    @classmethod
    def build(cls, column: np.ndarray) -> _Grouping:
        order = np.argsort(column, kind="stable")
        sorted_keys = column[order]
        if len(sorted_keys):
            first = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
        else:
            first = np.zeros(0, np.int64)
        return cls(sorted_keys[first], np.append(first, len(column)), order)

    def positions(self, key: int) -> np.ndarray:
        i = int(np.searchsorted(self.keys, key))
        if i == len(self.keys) or self.keys[i] != key:
            return self.order[:0]
        return self.order[self.starts[i] : self.starts[i + 1]]

    def counts(self) -> dict[int, int]:
        return dict(zip(self.keys.tolist(), np.diff(self.starts).tolist()))


@dataclass
class _IdIndex:
    """id -> record position by binary search over the sorted ids (no per-record dict entries)."""

    ids: np.ndarray  # sorted ids
    order: np.ndarray | None  # record position of each sorted id; None when records come sorted by id

    @classmethod
    def build(cls, ids: np.ndarray, source: str, what: str) -> _IdIndex:
        if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()):
            return cls(ids, None)
        order = np.argsort(ids, kind="stable")
        ids_sorted = ids[order]
        dup = np.flatnonzero(ids_sorted[1:] == ids_sorted[:-1])
        if len(dup):
            raise DataError(f"{source}: duplicate {what} id {int(ids_sorted[dup[0]])}")
        return cls(ids_sorted, order)

    def find(self, values: np.ndarray) -> np.ndarray:
        """Record positions of `values`, -1 where an id is absent."""
        i = np.searchsorted(self.ids, values)
        i_clip = np.minimum(i, max(len(self.ids) - 1, 0))
        hit = (i < len(self.ids)) & (self.ids[i_clip] == values) if len(self.ids) else np.zeros(len(values), bool)
        pos = i_clip if self.order is None else self.order[i_clip]
        return np.where(hit, pos, -1)

    def position(self, key: Any) -> int:
        try:
            key = int(key)
        except (TypeError, ValueError):
            return -1
        i = int(np.searchsorted(self.ids, key))
        if i == len(self.ids) or int(self.ids[i]) != key:
            return -1
        return i if self.order is None else int(self.order[i])


def _columns(records: Sequence[dict], keys: tuple[str, ...], source: str, what: str) -> np.ndarray:
    """The integer fields `keys` of every record as an (n, len(keys)) array, in one pass over the records."""
    n, k = len(records), len(keys)
    try:
        if k == 1:
            flat = np.fromiter(map(itemgetter(keys[0]), records), np.int64, n)
        else:
            flat = np.fromiter(chain.from_iterable(map(itemgetter(*keys), records)), np.int64, n * k)
    except (KeyError, TypeError, ValueError, OverflowError):
        problem = _record_problem(records, keys, what)
        raise DataError(f"{source}: " + (problem or f"a {what} has an id field ({', '.join(keys)}) "
                                         "that is not an integer")) from None
    return flat.reshape(n, k)


def _record_problem(records: Sequence[Any], keys: Sequence[str], what: str) -> str:
    """Why reading `keys` from `records` failed, found only once it has: the first record that is
    not an object, else the first missing key; "" when neither."""
    if not all(isinstance(r, dict) for r in records):
        return f"a {what} is not an object"
    missing = next((key for r in records for key in keys if key not in r), None)
    return f"a {what} has no '{missing}' field" if missing else ""


def _int_array(values: Sequence[Any], source: str, what: str, key: str) -> np.ndarray:
    try:
        return np.fromiter(values, np.int64, len(values))
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{source}: a {what} has a '{key}' that is not an integer id") from None


def _require_list(obj: Any, key: str, source: str) -> list[dict]:
    """The list under `key`; its items are checked to be objects where their columns are read."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list):
        raise DataError(f"{source}: expected a list of objects under '{key}'")
    return value


@dataclass
class RefCOCO:
    """One RefCOCO-family dataset (one `split_by`) with REFER-style indexes."""

    dataset: str
    split_by: str
    refs: list[dict]
    anns: list[dict]
    images: list[dict]
    categories: list[dict]
    image_dir: Path | None = None
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self._build_indexes()

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        root: Path | str,
        dataset: str | None = None,
        split_by: str | None = None,
        images: Path | str | None = None,
    ) -> RefCOCO:
        """Read `ROOT/<dataset>/refs(<split_by>).p` and `instances.json`; images from `images` or the REFER folder."""
        root = resolve_root(root)
        dataset, split_by = infer_dataset(root, dataset, split_by)
        known = KNOWN_SPLIT_BYS.get(dataset)
        if known is not None and split_by not in known:
            raise InputError(f"dataset {dataset} has no split_by '{split_by}'; it has: {', '.join(known)}")
        ds_dir = root / dataset
        if not ds_dir.is_dir():
            raise DataError(f"dataset folder not found: {ds_dir}")
        rpath = refs_path(root, dataset, split_by)
        if not rpath.is_file():
            have = sorted(p.name for p in ds_dir.glob("refs(*).p"))
            raise DataError(f"refs file not found: {rpath}" + (f" (found: {', '.join(have)})" if have else ""))
        refs = safe_load(rpath)
        if not isinstance(refs, list):  # each ref is checked to be a dict where its fields are read
            raise DataError(f"{rpath}: expected a list of refs (dicts)")
        ipath = ds_dir / "instances.json"
        instances = load_json(ipath, "instances file")
        image_dir = Path(images) if images is not None else root / DEFAULT_IMAGE_SUBDIR
        return cls(
            dataset=dataset,
            split_by=split_by,
            refs=refs,
            anns=_require_list(instances, "annotations", str(ipath)),
            images=_require_list(instances, "images", str(ipath)),
            categories=_require_list(instances, "categories", str(ipath)),
            image_dir=image_dir,
            source=str(ds_dir),
        )

    def _ref_columns(self) -> dict[str, tuple]:
        """Every ref field the indexes need, read in one pass over the refs (each ref dict touched once).

        `category_id` and `sent_ids` are optional: REFER refs have both, other files may not.
        """
        first = self.refs[0] if self.refs and isinstance(self.refs[0], dict) else {}
        fields = ["ref_id", "ann_id", "image_id", "split", "sentences"]
        fields += [f for f in ("category_id", "sent_ids") if f in first]
        try:
            rows = list(map(itemgetter(*fields), self.refs))
        except (KeyError, TypeError):
            raise DataError(f"{self.source}: {_record_problem(self.refs, fields, 'ref')}") from None
        columns = list(zip(*rows)) if rows else [()] * len(fields)
        return dict(zip(fields, columns))

    def _build_indexes(self) -> None:
        """Column-wise: pull each id column out once, then sort and search (see module docstring)."""
        src = self.source
        cols = self._ref_columns()
        self._ref_ids = _int_array(cols["ref_id"], src, "ref", "ref_id")
        ref_anns = _int_array(cols["ann_id"], src, "ref", "ann_id")
        ref_imgs = _int_array(cols["image_id"], src, "ref", "image_id")
        ann_cols = _columns(self.anns, ("id", "image_id", "category_id"), src, "annotation")
        self._refs = _IdIndex.build(self._ref_ids, src, "ref")
        self._anns = _IdIndex.build(ann_cols[:, 0].copy(), src, "annotation")
        self._imgs = _IdIndex.build(_columns(self.images, ("id",), src, "image")[:, 0], src, "image")
        self._cats = _IdIndex.build(_columns(self.categories, ("id",), src, "category")[:, 0], src, "category")

        # every ref must point at an annotation and an image that exist
        self._ref_ann_pos = self._check_members(self._anns.find(ref_anns), ref_anns, "ann_id", "annotation")
        self._check_members(self._imgs.find(ref_imgs), ref_imgs, "image_id", "image")
        ann_cats = ann_cols[:, 2].copy()
        missing_cat = self._cats.find(ann_cats) < 0
        if missing_cat.any():
            i = int(np.flatnonzero(missing_cat)[0])
            raise DataError(f"{src}: {int(missing_cat.sum())} annotation(s) have a category missing from "
                            f"'categories'; first: annotation {int(ann_cols[i, 0])} has category_id {int(ann_cats[i])}")
        self._ann_to_ref = _IdIndex.build(ref_anns, src, "referred annotation")

        # a ref's category: its own field (REFER has it), else its annotation's
        if "category_id" in cols:
            ref_cats = _int_array(cols["category_id"], src, "ref", "category_id")
        else:
            anns = self.anns
            ref_cats = np.array([anns[p]["category_id"] for p in self._ref_ann_pos.tolist()], dtype=np.int64)
        splits = cols["split"]
        try:
            codes = {name: i for i, name in enumerate(sorted(set(splits)))}
        except TypeError:
            raise DataError(f"{src}: a ref's 'split' is not a string") from None
        self._split_names = list(codes)
        self._by_split = _Grouping.build(np.fromiter(map(codes.__getitem__, splits), np.int64, len(splits)))
        self._by_image = _Grouping.build(ref_imgs)
        self._by_category = _Grouping.build(ref_cats)
        self._anns_by_image = _Grouping.build(ann_cols[:, 1].copy())
        self._build_sentence_index(cols)

    def _check_members(self, positions: np.ndarray, values: np.ndarray, key: str, target: str) -> np.ndarray:
        missing = positions < 0
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise DataError(
                f"{self.source}: {int(missing.sum())} ref(s) point at a missing {target}; "
                f"first: ref {int(self._ref_ids[i])} has {key} {int(values[i])}"
            )
        return positions

    def _build_sentence_index(self, cols: dict[str, tuple]) -> None:
        """sentence id -> (ref position, place in its list), from the refs' `sent_ids` lists.

        REFER refs list their sentence ids in `sent_ids`, in the order of `sentences`, so the ids
        come out of flat integer lists without touching each sentence dict; refs without
        `sent_ids` fall back to the sentences' own `sent_id` fields.
        """
        src = self.source
        try:
            lengths = np.fromiter(map(len, cols["sentences"]), np.int64, len(self.refs))
        except TypeError:
            raise DataError(f"{src}: a ref's 'sentences' is not a list") from None
        total = int(lengths.sum())
        try:
            id_lists = cols["sent_ids"]
            sent_ids = np.fromiter(chain.from_iterable(id_lists), np.int64, total)
            if not np.array_equal(np.fromiter(map(len, id_lists), np.int64, len(id_lists)), lengths):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            flat = list(chain.from_iterable(cols["sentences"]))
            sent_ids = _columns(flat, ("sent_id",), src, "sentence")[:, 0]
        self._sents = _IdIndex.build(sent_ids, src, "sentence")
        self._sent_owner = np.repeat(np.arange(len(self.refs)), lengths)
        self._sent_offset = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)

    # ---------------------------------------------------------------- look-ups
    def _get(self, index: _IdIndex, records: list[dict], key: Any, what: str) -> dict:
        pos = index.position(key)
        if pos < 0:
            raise InputError(f"{self.dataset}: no {what} with id {key}")
        return records[pos]

    def ref(self, ref_id: int) -> dict:
        return self._get(self._refs, self.refs, ref_id, "ref")

    def ann(self, ann_id: int) -> dict:
        return self._get(self._anns, self.anns, ann_id, "annotation")

    def image(self, image_id: int) -> dict:
        return self._get(self._imgs, self.images, image_id, "image")

    def category(self, category_id: int) -> dict:
        return self._get(self._cats, self.categories, category_id, "category")

    def _sentence_position(self, sent_id: Any) -> tuple[int, dict]:
        pos = self._sents.position(sent_id)
        if pos < 0:
            raise InputError(f"{self.dataset}: no sentence with id {sent_id}")
        ref = self.refs[int(self._sent_owner[pos])]
        sentence = ref["sentences"][int(self._sent_offset[pos])]
        if sentence.get("sent_id", sent_id) != int(sent_id):
            raise DataError(f"{self.source}: ref {ref['ref_id']}'s sent_ids disagree with its sentences")
        return pos, sentence

    def sentence(self, sent_id: int) -> dict:
        return self._sentence_position(sent_id)[1]

    def sentence_ref(self, sent_id: int) -> dict:
        """The ref a sentence belongs to (REFER's sentToRef)."""
        pos, _ = self._sentence_position(sent_id)
        return self.refs[int(self._sent_owner[pos])]

    @property
    def num_sentences(self) -> int:
        return len(self._sent_owner)

    def ref_ann(self, ref_id: int) -> dict:
        """The annotation a ref points at (REFER's refToAnn)."""
        pos = self._refs.position(ref_id)
        if pos < 0:
            raise InputError(f"{self.dataset}: no ref with id {ref_id}")
        return self.anns[int(self._ref_ann_pos[pos])]

    def ann_ref(self, ann_id: int) -> dict | None:
        """The ref of an annotation, or None when it is not referred (REFER's annToRef)."""
        pos = self._ann_to_ref.position(ann_id)
        return None if pos < 0 else self.refs[pos]

    @property
    def splits(self) -> list[str]:
        return sorted(self._split_names)

    def split_counts(self) -> dict[str, int]:
        counts = self._by_split.counts()
        return dict(sorted((self._split_names[int(k)], n) for k, n in counts.items()))

    def _split_code(self, split: str) -> int:
        try:
            return self._split_names.index(split)
        except ValueError:
            raise InputError(
                f"{self.dataset}({self.split_by}) has no split '{split}'; it has: {', '.join(self.splits)}"
            ) from None

    def ref_ids(
        self,
        split: str | None = None,
        image_ids: Iterable[int] | None = None,
        cat_ids: Iterable[int] | None = None,
    ) -> list[int]:
        """Ref ids in file order, filtered by split, images and categories (REFER's getRefIds)."""
        keep: np.ndarray | None = None

        def narrow(pos: np.ndarray) -> None:
            nonlocal keep
            keep = pos if keep is None else np.intersect1d(keep, pos, assume_unique=True)

        if split is not None:
            narrow(self._by_split.positions(self._split_code(split)))
        empty = np.zeros(0, np.int64)
        if image_ids is not None:
            narrow(np.unique(np.concatenate([self._by_image.positions(int(i)) for i in image_ids] or [empty])))
        if cat_ids is not None:
            narrow(np.unique(np.concatenate([self._by_category.positions(int(c)) for c in cat_ids] or [empty])))
        return (self._ref_ids if keep is None else self._ref_ids[np.sort(keep)]).tolist()

    def image_refs(self, image_id: int) -> list[dict]:
        return [self.refs[p] for p in self._by_image.positions(int(image_id)).tolist()]

    def image_anns(self, image_id: int) -> list[dict]:
        return [self.anns[p] for p in self._anns_by_image.positions(int(image_id)).tolist()]

    def category_refs(self, category_id: int) -> list[dict]:
        return [self.refs[p] for p in self._by_category.positions(int(category_id)).tolist()]

    # ---------------------------------------------------------------- masks and images
    def mask(self, ref_id: int) -> np.ndarray:
        """The referred object's mask as a (H, W) uint8 array of 0 and 1."""
        return self.ann_mask(self.ref(ref_id)["ann_id"])

    def ann_mask(self, ann_id: int) -> np.ndarray:
        ann = self.ann(ann_id)
        what = f"annotation {ann_id}"
        height, width = image_size(self.image(ann["image_id"]), what)
        return decode_segmentation(ann.get("segmentation"), height, width, what)

    def image_path(self, image_id: int) -> Path:
        if self.image_dir is None:
            raise DataError(f"{self.dataset}: no image folder set")
        return member_path(self.image_dir, self.image(image_id).get("file_name"), f"image {image_id}")

    def load_image(self, image_id: int):
        """The image as RGB, checked against the size instances.json gives it."""
        from refcoco_edit.imaging.files import open_image

        info = self.image(image_id)
        height, width = image_size(info, f"image {image_id}")
        im = open_image(self.image_path(image_id))
        if im.size != (width, height):
            raise DataError(
                f"{self.image_path(image_id)}: image is {im.size[0]}x{im.size[1]} but instances.json says "
                f"{info['width']}x{info['height']}"
            )
        return im

    # ---------------------------------------------------------------- summary
    def stats(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split_by": self.split_by,
            "images": len(self.images),
            "annotations": len(self.anns),
            "categories": len(self.categories),
            "refs": len(self.refs),
            "sentences": self.num_sentences,
            "splits": self.split_counts(),
        }


def member_path(folder: Path, name: Any, what: str) -> Path:
    """`folder / name` for a file name read from a data file, refused when it would leave `folder`
    (absolute, `..`), so a crafted dataset cannot make the toolkit read and publish other files."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{what}: no file name")
    rel = Path(name)
    if rel.is_absolute() or rel.drive or ".." in rel.parts:
        raise DataError(f"{what}: file name {name!r} points outside {folder}")
    return Path(folder) / rel


def image_size(info: dict, what: str) -> tuple[int, int]:
    """(height, width) of an instances.json image record, checked against `check_size`."""
    h, w = info.get("height"), info.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (h, w)):
        raise DataError(f"{what}: image {info.get('id')} has a height/width that is not an integer ({h!r}, {w!r})")
    check_size(h, w, what)
    return h, w


def check_size(height: int, width: int, what: str) -> None:
    """Refuse a mask or image size outside 1..MAX_SIDE a side or over the toolkit's pixel limit."""
    from refcoco_edit.imaging.files import check_pixels

    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise DataError(f"{what}: image size {width}x{height} is outside the limits (1 to {MAX_SIDE} a side)")
    check_pixels(width, height, what)


def _check_polygons(segm: list, height: int, width: int, what: str) -> list[list[float]]:
    """The polygons as float lists, refused when pycocotools would allocate without bound."""
    if not segm or not all(isinstance(p, (list, tuple)) for p in segm):
        raise DataError(f"{what}: polygons must be a list of coordinate lists")
    if sum(len(p) for p in segm) > MAX_POLYGON_COORDS:
        raise DataError(f"{what}: polygons have more than {MAX_POLYGON_COORDS} coordinates")
    polys = [list(map(float, p)) for p in segm]
    if any(len(p) < 6 or len(p) % 2 for p in polys):
        raise DataError(f"{what}: polygons need an even number (at least 6) of coordinates")
    coords = np.concatenate([np.asarray(p) for p in polys])
    # far-off coordinates would make pycocotools allocate without bound
    if not np.isfinite(coords).all() or np.abs(coords).max() > 4 * max(height, width) + 16:
        raise DataError(f"{what}: polygon coordinates lie far outside the {width}x{height} image")
    perimeter = 0.0
    for p in polys:
        xy = np.asarray(p).reshape(-1, 2)
        perimeter += float(np.abs(np.diff(xy, axis=0, append=xy[:1])).max(axis=1).sum())
    if perimeter > MAX_POLYGON_PERIMETER:
        raise DataError(f"{what}: polygon edges run {perimeter:.0f} pixels, over the limit of {MAX_POLYGON_PERIMETER}")
    return polys


def decode_segmentation(segm: Any, height: int, width: int, what: str = "segmentation") -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to a (H, W) 0/1 uint8 mask.

    Every size pycocotools will see (the image, polygon lengths, run counts) is checked first, so a
    crafted annotation gets a `DataError` naming it rather than a crash in C.
    """
    from pycocotools import mask as mask_utils

    check_size(height, width, what)
    try:
        if isinstance(segm, list):
            polys = _check_polygons(segm, height, width, what)
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            if list(segm["size"]) != [height, width]:
                raise DataError(f"{what}: RLE size {list(segm['size'])} differs from the image's {[height, width]}")
            if isinstance(segm["counts"], list):
                # pycocotools leaves the pixels past a short run list as uninitialised memory
                runs = segm["counts"]
                if len(runs) > height * width + 1:
                    raise DataError(f"{what}: RLE has more runs than the image has pixels")
                if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in runs):
                    raise DataError(f"{what}: RLE counts must be non-negative integers")
                if sum(runs) != height * width:
                    raise DataError(f"{what}: RLE counts cover {sum(runs)} pixels, not {height}x{width}")
                rle = mask_utils.frPyObjects(segm, height, width)
            else:
                counts = segm["counts"]
                counts = counts.encode("ascii") if isinstance(counts, str) else counts
                if not isinstance(counts, bytes) or len(counts) > 12 * (height * width + 1):
                    raise DataError(f"{what}: RLE counts must be a string of at most 12 characters a pixel")
                # pycocotools writes past its buffer when the counts add up to more than H*W
                total = int(rle_string_counts(counts).sum())
                if total != height * width:
                    raise DataError(f"{what}: RLE counts cover {total} pixels, not {height}x{width}")
                rle = {"size": [height, width], "counts": counts}
        else:
            raise DataError(f"{what}: segmentation is neither polygons nor RLE")
        mask = mask_utils.decode(rle)
    except DataError:
        raise
    except (TypeError, ValueError, IndexError, UnicodeEncodeError) as exc:
        raise DataError(f"{what}: cannot decode segmentation: {exc}") from None
    if mask.ndim == 3:
        mask = mask[..., 0]
    return np.ascontiguousarray(mask, dtype=np.uint8)


def rle_string_counts(counts: bytes) -> np.ndarray:
    """Decode COCO's compressed RLE string (pycocotools' `rleFrString`) into run lengths, checking it.

    Each number is little-endian base-32 in characters 48..111: 5 bits a character, bit 0x20 means
    "more follows", bit 0x10 of the last character is the sign; from the fourth number on, each is
    stored as the difference to the number two places before it. Vectorised with numpy: a mask of
    COCO size decodes in microseconds.
    """
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if len(c) == 0:
        return np.zeros(0, np.int64)
    if ((c < 0) | (c >= 64)).any():
        raise DataError("RLE counts string has a character outside COCO's alphabet")
    last = (c & 0x20) == 0  # the last character of each number
    if not last[-1]:
        raise DataError("RLE counts string ends in the middle of a number")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 12:  # 60 bits: far beyond any image, and int64 cannot overflow
        raise DataError("RLE counts string holds a number too long for a run length")
    shift = 5 * (np.arange(len(c)) - np.repeat(starts, lengths))
    x = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * lengths[negative])  # sign extension, as `x |= -1 << 5k`
    out = x.copy()
    # from index 3 on, a number is the difference to the one two places before: cumulative sums
    # over the odd indices (from 1) and over the even indices from 2
    out[1::2] = np.cumsum(x[1::2])
    out[2::2] = np.cumsum(x[2::2])
    if (out < 0).any():
        raise DataError("RLE counts string decodes to a negative run length")
    return out
