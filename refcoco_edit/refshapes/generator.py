"""Writing a RefShapes dataset in the REFER layout of RefCOCO, with exact reference edits.

Layout under the root folder (the one REFER's `data_root` points at):

    <dataset>/instances.json          COCO instances (polygons, and compressed RLE for every 5th)
    <dataset>/refs(<split_by>).p      REFER refs, a pickled list of plain dicts (protocol 2)
    <dataset>/edits.json              ground truth: objects, distractors, edits
    <dataset>/edits/*.png             edited images (only with write_images)
    images/mscoco/images/train2014/   source images, PNG

Everything is deterministic: image i draws from its own seed sequence (seed, i), so it does not
depend on how many images follow it, and files are written byte-for-byte reproducibly.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from refcoco_edit.errors import InputError
from refcoco_edit.refshapes import geometry as geo
from refcoco_edit.refshapes.edits import Edit, apply_edit, paint, plan_edits
from refcoco_edit.refshapes.expressions import candidate_forms, choose_sentences, tokenize
from refcoco_edit.refshapes.scene import MAX_OBJECTS, MIN_OBJECTS, SceneObject, sample_scene

log = logging.getLogger(__name__)

IMAGE_DIR = Path("images/mscoco/images/train2014")
SPLITS = ("train", "val", "testA", "testB")
SPLIT_P = (0.7, 0.1, 0.1, 0.1)
REFS_PER_IMAGE = (1, 2, 3, 4)
REFS_PER_IMAGE_P = (0.14, 0.34, 0.36, 0.16)  # mean 2.54; a few scenes cap it: 2.5 as RefCOCO
RLE_EVERY = 5  # every 5th annotation is stored as compressed RLE instead of a polygon
EDITS_VERSION = 1
_EDIT_FILE = re.compile(r"^\d{6,}_r\d+_(replace|remove|attribute)\.png$")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass
class ImagePlan:
    """Everything drawn for one image, before ids of refs, sentences and edits are assigned."""

    image_id: int
    split: str
    background: dict
    objects: list[SceneObject]
    refs: list[tuple[int, list[str]]] = field(default_factory=list)  # (object index, raw sentences)
    edits: list[list[Edit]] = field(default_factory=list)  # per ref

    @property
    def file_name(self) -> str:
        return f"RefShapes_train2014_{self.image_id:012d}.png"

    def ann_id(self, index: int) -> int:
        # not consecutive and disjoint from image ids, so code that mixes the two up fails
        return 1000 * self.image_id + index + 1


def image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def distractors(obj: SceneObject, objects: list[SceneObject]) -> list[int]:
    """Indices of the other objects that share the kind or the colour of `obj`."""
    return [i for i, o in enumerate(objects)
            if o is not obj and (o.kind == obj.kind or o.colour == obj.colour)]


def plan_image(seed: int, index: int) -> ImagePlan:
    """Draw image `index`: split, background, scene, referred objects, sentences and edits."""
    rng = image_rng(seed, index)
    split = str(rng.choice(SPLITS, p=SPLIT_P))
    background = geo.draw_background(rng)
    wanted = int(rng.choice(REFS_PER_IMAGE, p=REFS_PER_IMAGE_P))
    num_objects = int(rng.integers(max(MIN_OBJECTS, wanted), MAX_OBJECTS + 1))
    objects = sample_scene(rng, num_objects)
    plan = ImagePlan(index + 1, split, background, objects)
    forms = {i: candidate_forms(o, objects) for i, o in enumerate(objects)
             if distractors(o, objects)}
    eligible = [i for i, f in forms.items() if f]
    chosen = sorted(int(i) for i in rng.choice(eligible, size=min(wanted, len(eligible)),
                                               replace=False)) if eligible else []
    for i in chosen:
        plan.refs.append((i, choose_sentences(forms[i], rng)))
    for i in chosen:
        plan.edits.append(plan_edits(objects[i], rng))
    return plan


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write only when the content differs, so regenerating leaves unchanged files untouched."""
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            + "\n").encode("ascii")


def _check_args(num_images: int, seed: int, dataset: str, split_by: str) -> None:
    if not isinstance(num_images, int) or num_images < 1:
        raise InputError(f"num_images must be a positive integer, got {num_images!r}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    for what, name in (("dataset", dataset), ("split_by", split_by)):
        if not _NAME.match(name) or name in (".", ".."):
            raise InputError(f"{what} must be a plain name (letters, digits, _.+-), got {name!r}")


def generate(out_root: Path, num_images: int = 40, seed: int = 0, *, write_images: bool = True,
             dataset: str = "refshapes", split_by: str = "unc", progress: bool = False) -> dict:
    """Write a RefShapes dataset under `out_root`; return counts of what was written.

    With write_images=False no PNG is written: edits.json still lists every edit with its
    edit_mask, but `edited_file` is null (the full-size benchmark copy).
    """
    _check_args(num_images, seed, dataset, split_by)
    root = Path(out_root)
    ds_dir = root / dataset
    edits_dir = ds_dir / "edits"
    image_dir = root / IMAGE_DIR
    ds_dir.mkdir(parents=True, exist_ok=True)
    if write_images:
        edits_dir.mkdir(exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)

    categories = [{"id": i + 1, "name": k, "supercategory": "shape"}
                  for i, k in enumerate(geo.KINDS)]
    category_id = {k: i + 1 for i, k in enumerate(geo.KINDS)}
    images: list[dict] = []
    annotations: list[dict] = []
    refs: list[dict] = []
    objects: dict[str, dict] = {}
    distractor_map: dict[str, list[int]] = {}
    edit_records: list[dict] = []
    written_edits: set[str] = set()
    num_sentences = 0

    indices = range(num_images)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="refshapes", unit="image")
    for index in indices:
        plan = plan_image(seed, index)
        images.append({"id": plan.image_id, "file_name": plan.file_name,
                       "width": geo.WIDTH, "height": geo.HEIGHT})
        for k, obj in enumerate(plan.objects):
            ann_id = plan.ann_id(k)
            if len(annotations) % RLE_EVERY == RLE_EVERY - 1:
                segmentation: object = geo.rle_to_json(obj.rle)
            else:
                segmentation = [obj.polygon]
            annotations.append({"id": ann_id, "image_id": plan.image_id,
                                "category_id": category_id[obj.kind],
                                "segmentation": segmentation, "area": obj.area,
                                "bbox": obj.bbox, "iscrowd": 0})
            objects[str(ann_id)] = {"image_id": plan.image_id, "kind": obj.kind,
                                    "colour": obj.colour, "size": obj.size,
                                    "center": [obj.x, obj.y], "area": obj.area}

        source = bg = None
        if write_images:
            bg = geo.render_background(plan.background)
            source = bg.copy()
            for obj in plan.objects:
                paint(source, obj)
            _write_if_changed(image_dir / plan.file_name, _png_bytes(source))

        stem, ext = plan.file_name.rsplit(".", 1)
        for (k, raws), edits in zip(plan.refs, plan.edits):
            obj = plan.objects[k]
            ann_id = plan.ann_id(k)
            ref_id = len(refs)
            sentences = []
            for raw in raws:
                tokens = tokenize(raw)
                sentences.append({"tokens": tokens, "raw": raw, "sent_id": num_sentences,
                                  "sent": " ".join(tokens)})
                num_sentences += 1
            refs.append({"sent_ids": [s["sent_id"] for s in sentences], "file_name":
                         f"{stem}_{ann_id}.{ext}", "ann_id": ann_id, "ref_id": ref_id,
                         "image_id": plan.image_id, "split": plan.split,
                         "sentences": sentences, "category_id": category_id[obj.kind]})
            distractor_map[str(ref_id)] = [plan.ann_id(i) for i in
                                           distractors(obj, plan.objects)]
            for edit in edits:
                edited_file = None
                if write_images:
                    edited_file = f"edits/{plan.image_id:06d}_r{ref_id}_{edit.edit_type}.png"
                    _write_if_changed(ds_dir / edited_file,
                                      _png_bytes(apply_edit(source, bg, edit)))
                    written_edits.add(Path(edited_file).name)
                edit_records.append({"edit_id": len(edit_records), "ref_id": ref_id,
                                     "ann_id": ann_id, "image_id": plan.image_id,
                                     "edit_type": edit.edit_type, "target": edit.target,
                                     "params": edit.params, "edited_file": edited_file,
                                     "edit_mask": geo.rle_to_json(edit.mask_rle)})

    if write_images:
        for stale in edits_dir.iterdir():
            if _EDIT_FILE.match(stale.name) and stale.name not in written_edits:
                stale.unlink()

    info = {"description": "RefShapes: synthetic referring expressions over flat shapes",
            "version": "1.0", "contributor": "refcoco-edit", "seed": seed,
            "num_images": num_images, "image_size": [geo.WIDTH, geo.HEIGHT]}
    _write_if_changed(ds_dir / "instances.json", _json_bytes(
        {"info": info, "licenses": [], "images": images, "annotations": annotations,
         "categories": categories}))
    # A JSON round trip makes the pickle depend on values only, not on which equal strings
    # happen to be the same Python object (pickle memoises by identity).
    plain_refs = json.loads(json.dumps(refs))
    _write_if_changed(ds_dir / f"refs({split_by}).p", pickle.dumps(plain_refs, protocol=2))
    _write_if_changed(ds_dir / "edits.json", _json_bytes(
        {"version": EDITS_VERSION, "dataset": dataset, "split_by": split_by, "seed": seed,
         "image_size": [geo.WIDTH, geo.HEIGHT], "objects": objects,
         "distractors": distractor_map, "edits": edit_records}))

    summary = {"images": len(images), "annotations": len(annotations), "refs": len(refs),
               "sentences": num_sentences, "edits": len(edit_records)}
    log.info("wrote RefShapes to %s: %s", root, summary)
    return summary
