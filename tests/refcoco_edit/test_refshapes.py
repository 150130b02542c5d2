"""RefShapes: REFER layout, exact masks and pixels, unambiguous sentences, exact edits.

Checks read the files with plain json/pickle/Pillow/pycocotools, never through the generator's own
data structures, so they test what a RefCOCO reader would see.
"""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from refcoco_edit.errors import InputError
from refcoco_edit.refshapes import (
    COLOURS,
    KINDS,
    SAMPLE_DATASET,
    SAMPLE_SPLIT_BY,
    generate,
    parse_expression,
    resolve_expression,
    sample_root,
)

IMAGE_DIR = Path("images/mscoco/images/train2014")
REF_KEYS = {"ref_id", "ann_id", "image_id", "category_id", "split", "file_name", "sent_ids",
            "sentences"}
SENT_KEYS = {"sent_id", "raw", "sent", "tokens"}
ANN_KEYS = {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
EDIT_KEYS = {"edit_id", "ref_id", "ann_id", "image_id", "edit_type", "target", "params",
             "edited_file", "edit_mask"}


# ----------------------------------------------------------------------------- helpers


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def load(root: Path, dataset: str = SAMPLE_DATASET, split_by: str = SAMPLE_SPLIT_BY):
    ds = root / dataset
    instances = json.loads((ds / "instances.json").read_text())
    with open(ds / f"refs({split_by}).p", "rb") as f:
        refs = pickle.load(f)
    edits = json.loads((ds / "edits.json").read_text())
    return instances, refs, edits


def decode_segmentation(segm, height: int, width: int) -> np.ndarray:
    """What a COCO reader does: polygons rasterised and merged, compressed RLE used as is."""
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    else:
        rle = segm
    return mask_utils.decode(rle).astype(bool)


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.format == "PNG"
        return np.asarray(im).copy()


def scene_objects(edits: dict) -> dict[int, dict[str, dict]]:
    by_image: dict[int, dict[str, dict]] = defaultdict(dict)
    for ann_id, obj in edits["objects"].items():
        by_image[obj["image_id"]][ann_id] = obj
    return by_image


def assert_plain(value) -> None:
    """Only the types REFER's pickles hold: no classes, no bytes, no tuples, no floats."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str
            assert_plain(v)
    elif isinstance(value, list):
        for v in value:
            assert_plain(v)
    else:
        assert type(value) in (str, int), type(value)


@pytest.fixture(scope="module")
def sample() -> tuple[dict, list, dict]:
    return load(sample_root())


@pytest.fixture(scope="module")
def fresh_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refshapes_sample")
    generate(root, num_images=40, seed=0)
    return root


# ----------------------------------------------------------------------------- determinism


def test_committed_sample_is_what_generate_writes(fresh_sample: Path) -> None:
    committed = tree(sample_root())
    fresh = tree(fresh_sample)
    assert sorted(committed) == sorted(fresh), "stale or missing files: regenerate the sample"
    changed = [name for name in fresh if fresh[name] != committed[name]]
    assert not changed, f"committed sample is stale: {changed[:5]}"


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert generate(a, 5, seed=3) == generate(b, 5, seed=3)
    generate(c, 5, seed=4)
    assert tree(a) == tree(b)
    ta, tc = tree(a), tree(c)
    assert ta.keys() != tc.keys() or any(ta[k] != tc[k] for k in ta)
    assert ta["refshapes/instances.json"] != tc["refshapes/instances.json"]


def test_image_does_not_depend_on_later_images(tmp_path: Path) -> None:
    generate(tmp_path / "short", 3, seed=5)
    generate(tmp_path / "long", 7, seed=5)
    short, long_ = load(tmp_path / "short"), load(tmp_path / "long")
    assert short[0]["annotations"] == [a for a in long_[0]["annotations"] if a["image_id"] <= 3]
    assert short[1] == [r for r in long_[1] if r["image_id"] <= 3]
    for name in (tmp_path / "short" / IMAGE_DIR).iterdir():
        assert name.read_bytes() == (tmp_path / "long" / IMAGE_DIR / name.name).read_bytes()


# ----------------------------------------------------------------------------- REFER layout


def test_refer_layout(sample) -> None:
    instances, refs, edits = sample
    assert set(instances) == {"info", "licenses", "images", "annotations", "categories"}
    assert instances["categories"] == [{"id": i + 1, "name": k, "supercategory": "shape"}
                                       for i, k in enumerate(KINDS)]
    images = {im["id"]: im for im in instances["images"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    assert len(images) == 40 and len(anns) == len(instances["annotations"])
    for im in images.values():
        assert set(im) == {"id", "file_name", "width", "height"} and im["id"] > 0
        assert im["width"] % 8 == 0 and im["height"] % 8 == 0
        assert im["file_name"] == f"RefShapes_train2014_{im['id']:012d}.png"
        assert (sample_root() / IMAGE_DIR / im["file_name"]).is_file()
    for a in anns.values():
        assert set(a) == ANN_KEYS and a["id"] > 0 and a["iscrowd"] == 0
        assert a["image_id"] in images and 1 <= a["category_id"] <= len(KINDS)
    assert set(anns).isdisjoint(images), "ann ids and image ids should not coincide"

    assert isinstance(refs, list) and refs
    assert_plain(refs)
    split_of: dict[int, str] = {}
    sent_ids = []
    for i, ref in enumerate(refs):
        assert set(ref) == REF_KEYS and ref["ref_id"] == i
        ann = anns[ref["ann_id"]]
        assert ref["image_id"] == ann["image_id"] and ref["category_id"] == ann["category_id"]
        stem = images[ref["image_id"]]["file_name"].rsplit(".", 1)[0]
        assert ref["file_name"] == f"{stem}_{ref['ann_id']}.png"
        assert ref["split"] in {"train", "val", "testA", "testB"}
        assert split_of.setdefault(ref["image_id"], ref["split"]) == ref["split"]
        assert 1 <= len(ref["sentences"]) <= 4
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for s in ref["sentences"]:
            assert set(s) == SENT_KEYS
            assert s["tokens"] and all(t == t.lower() and t.isalnum() for t in s["tokens"])
            assert s["sent"] == " ".join(s["tokens"])
            assert s["raw"].lower().replace("-", " ") == s["sent"]
            sent_ids.append(s["sent_id"])
        assert len({s["sent"] for s in ref["sentences"]}) == len(ref["sentences"])
    assert sent_ids == list(range(len(sent_ids)))
    assert len({r["ann_id"] for r in refs}) == len(refs)
    assert set(split_of.values()) == {"train", "val", "testA", "testB"}

    assert edits["version"] == 1 and edits["dataset"] == SAMPLE_DATASET and edits["seed"] == 0
    assert set(edits["objects"]) == {str(a) for a in anns}
    for ann_id, obj in edits["objects"].items():
        assert obj["kind"] == KINDS[anns[int(ann_id)]["category_id"] - 1]
        assert obj["colour"] in COLOURS and obj["size"] in {"small", "medium", "large"}
        assert obj["area"] == anns[int(ann_id)]["area"]


def test_sizes_and_ratios_are_sane(sample) -> None:
    instances, refs, edits = sample
    per_image = defaultdict(int)
    for a in instances["annotations"]:
        per_image[a["image_id"]] += 1
    assert len(per_image) == 40 and min(per_image.values()) >= 2 and max(per_image.values()) <= 6
    assert 2.0 <= len(refs) / 40 <= 3.0
    sentences = sum(len(r["sentences"]) for r in refs)
    assert 2.4 <= sentences / len(refs) <= 3.3
    assert len(edits["edits"]) == 3 * len(refs)
    rle = [a for a in instances["annotations"] if isinstance(a["segmentation"], dict)]
    assert 0.1 <= len(rle) / len(instances["annotations"]) <= 0.3
    size = sum(p.stat().st_size for p in sample_root().rglob("*") if p.is_file())
    assert size < 2 * 1024 * 1024


# ----------------------------------------------------------------------------- masks and pixels


def test_areas_and_bboxes_match_decoded_masks(sample) -> None:
    instances, _, _ = sample
    images = {im["id"]: im for im in instances["images"]}
    for a in instances["annotations"]:
        im = images[a["image_id"]]
        m = decode_segmentation(a["segmentation"], im["height"], im["width"])
        assert a["area"] == float(m.sum()) > 0
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_painted_pixels_equal_object_colour_exactly(sample) -> None:
    instances, _, edits = sample
    by_image = defaultdict(list)
    for a in instances["annotations"]:
        by_image[a["image_id"]].append(a)
    for im in instances["images"]:
        pixels = rgb(sample_root() / IMAGE_DIR / im["file_name"])
        assert pixels.shape == (im["height"], im["width"], 3)
        covered = np.zeros(pixels.shape[:2], dtype=int)
        for a in by_image[im["id"]]:
            m = decode_segmentation(a["segmentation"], im["height"], im["width"])
            covered += m
            colour = COLOURS[edits["objects"][str(a["id"])]["colour"]]
            assert (pixels[m] == colour).all()
        assert covered.max() == 1, "objects overlap"
        background = np.unique(pixels[covered == 0], axis=0)
        assert len(background) == 2, "background is two tones"
        assert not any((background == c).all(axis=1).any() for c in COLOURS.values())


# ----------------------------------------------------------------------------- expressions


def test_every_ref_has_a_distractor(sample) -> None:
    _, refs, edits = sample
    objects = edits["objects"]
    for ref in refs:
        me = objects[str(ref["ann_id"])]
        expected = sorted(int(k) for k, o in objects.items()
                          if o["image_id"] == ref["image_id"] and int(k) != ref["ann_id"]
                          and (o["kind"] == me["kind"] or o["colour"] == me["colour"]))
        assert expected, f"ref {ref['ref_id']} has no distractor"
        assert sorted(edits["distractors"][str(ref["ref_id"])]) == expected


def test_every_sentence_picks_out_exactly_its_object(sample) -> None:
    _, refs, edits = sample
    scenes = scene_objects(edits)
    relations = set()
    for ref in refs:
        for s in ref["sentences"]:
            assert resolve_expression(s["raw"], scenes[ref["image_id"]]) == [ref["ann_id"]], s
            relations.add(parse_expression(s["sent"]).relation)
    assert {"only", "extreme", "ordinal"} <= relations
    assert relations & {"superlative", "comparative", "label"}


def _scene(*objs: tuple[str, str, str, float, float, float]) -> dict[int, dict]:
    return {i + 1: {"kind": k, "colour": c, "size": s, "area": a, "center": [x, y]}
            for i, (k, c, s, a, x, y) in enumerate(objs)}


def test_expression_semantics_on_a_hand_made_scene() -> None:
    scene = _scene(
        ("circle", "red", "small", 250, 30, 100),
        ("circle", "red", "large", 1300, 100, 60),
        ("circle", "blue", "medium", 600, 170, 100),
        ("square", "blue", "medium", 620, 180, 160),
    )
    def ids(text: str) -> list[int]:
        return resolve_expression(text, scene)
    assert ids("the red circle on the left") == [1]
    assert ids("Left red circle") == [1]
    assert ids("the blue circle") == [3]
    assert ids("the circle") == [1, 2, 3]
    assert ids("the square") == [4]
    assert ids("the second circle from the left") == [2]
    assert ids("third circle from right") == [1]
    assert ids("the fourth circle from the top") == []
    assert ids("the middle circle") == [2]
    assert ids("the bigger of the two red circles") == [2]
    assert ids("the smaller of the two red ones") == [1]
    assert ids("the bigger of the two circles") == []  # there are three
    assert ids("the smallest shape") == [1]
    assert ids("the small red circle") == [1]
    assert ids("the medium-sized blue object") == [3, 4]
    assert ids("the topmost circle") == [2]
    assert ids("the blue one at the bottom") == [4]
    assert ids("the big square") == []
    # 170 vs 180 is too close to call "rightmost"
    assert ids("the rightmost blue shape") == [3, 4]
    # 600 vs 620 is too close to call "bigger"
    assert ids("the larger of the two blue shapes") == [3, 4]
    for bad in ("", "the", "the red giraffe", "second circle", "the bigger of the two circle",
                "the circles"):
        with pytest.raises(InputError):
            parse_expression(bad)


# ----------------------------------------------------------------------------- edits


def test_edits_change_exactly_their_mask(sample) -> None:
    instances, refs, edits = sample
    images = {im["id"]: im for im in instances["images"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    ds = sample_root() / SAMPLE_DATASET
    types = defaultdict(int)
    for e in edits["edits"]:
        assert set(e) == EDIT_KEYS
        assert refs[e["ref_id"]]["ann_id"] == e["ann_id"]
        assert refs[e["ref_id"]]["image_id"] == e["image_id"]
        types[e["edit_type"]] += 1
        im = images[e["image_id"]]
        source = rgb(sample_root() / IMAGE_DIR / im["file_name"])
        edited = rgb(ds / e["edited_file"])
        mask = mask_utils.decode(e["edit_mask"]).astype(bool)
        old = decode_segmentation(anns[e["ann_id"]]["segmentation"], im["height"], im["width"])
        changed = (source != edited).any(axis=2)
        assert (edited[~mask] == source[~mask]).all(), e["edited_file"]
        assert changed.any()
        assert (mask | ~old).all(), "edit mask covers the old object"
        if e["edit_type"] == "remove":
            assert e["target"] == "" and e["params"] == {}
            assert (changed == old).all()
            assert (mask == old).all()
        elif e["edit_type"] == "attribute":
            assert e["target"] == e["params"]["colour"] in COLOURS
            assert (changed == old).all() and (edited[old] == COLOURS[e["target"]]).all()
        else:
            kind, colour = e["params"]["kind"], e["params"]["colour"]
            old_obj = edits["objects"][str(e["ann_id"])]
            assert e["target"] == f"{colour} {kind}" and kind in KINDS
            assert (kind, colour) != (old_obj["kind"], old_obj["colour"])
            painted = (edited == COLOURS[colour]).all(axis=2) & mask
            assert painted.sum() > 0.8 * old_obj["area"]
    assert types["replace"] == types["remove"] == types["attribute"] == len(refs)


# ----------------------------------------------------------------------------- without images


def test_without_images_same_annotations_and_valid_masks(tmp_path: Path) -> None:
    counts = generate(tmp_path / "noimg", 60, seed=2, write_images=False)
    generate(tmp_path / "img", 60, seed=2)
    assert not (tmp_path / "noimg" / "images").exists()
    assert not (tmp_path / "noimg" / SAMPLE_DATASET / "edits").exists()
    ds_a, ds_b = tmp_path / "noimg" / SAMPLE_DATASET, tmp_path / "img" / SAMPLE_DATASET
    for name in ("instances.json", "refs(unc).p"):
        assert (ds_a / name).read_bytes() == (ds_b / name).read_bytes()
    instances, refs, edits = load(tmp_path / "noimg")
    assert counts == {"images": 60, "annotations": len(instances["annotations"]),
                      "refs": len(refs), "sentences": sum(len(r["sentences"]) for r in refs),
                      "edits": len(edits["edits"])}
    assert 2.0 <= counts["refs"] / 60 <= 3.0
    assert all(e["edited_file"] is None for e in edits["edits"])
    for e in edits["edits"]:
        assert mask_utils.area(e["edit_mask"]) >= edits["objects"][str(e["ann_id"])]["area"]
    for a in instances["annotations"]:
        m = decode_segmentation(a["segmentation"], 192, 256)
        assert a["area"] == float(m.sum()) > 0


def test_custom_dataset_name_and_bad_arguments(tmp_path: Path) -> None:
    generate(tmp_path, 2, seed=1, dataset="shapes2", split_by="google", write_images=False)
    assert (tmp_path / "shapes2" / "refs(google).p").is_file()
    for kwargs in ({"num_images": 0}, {"seed": -1}, {"dataset": "../x"}, {"split_by": "a/b"}):
        with pytest.raises(InputError):
            generate(tmp_path, **{"num_images": 1, **kwargs})
