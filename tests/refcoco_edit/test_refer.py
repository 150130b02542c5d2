"""The RefCOCO data layer against independent references: REFER's dict-append indexes and pycocotools' COCO API."""

from __future__ import annotations

import json
import os
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from refcoco_edit.errors import DataError, InputError, UnsafePickleError
from refcoco_edit.refer.reader import RefCOCO, decode_segmentation, rle_string_counts
from refcoco_edit.refer.safe_pickle import safe_load, safe_load_bytes
from tests.refcoco_edit.conftest import make_mini_refcoco
from tests.refcoco_edit.py2pickle import dumps_py2


def reference_indexes(refs: list[dict], anns: list[dict]) -> dict:
    """REFER's createIndex, written out plainly: one dict append per record."""
    idx: dict = {"img_refs": defaultdict(list), "cat_refs": defaultdict(list), "sent_ref": {}, "ref_ann": {},
                 "img_anns": defaultdict(list), "split_refs": defaultdict(list)}
    ann_by_id = {a["id"]: a for a in anns}
    for a in anns:
        idx["img_anns"][a["image_id"]].append(a["id"])
    for r in refs:
        idx["img_refs"][r["image_id"]].append(r["ref_id"])
        idx["cat_refs"][r["category_id"]].append(r["ref_id"])
        idx["split_refs"][r["split"]].append(r["ref_id"])
        idx["ref_ann"][r["ref_id"]] = ann_by_id[r["ann_id"]]
        for s in r["sentences"]:
            idx["sent_ref"][s["sent_id"]] = r["ref_id"]
    return idx


def test_loads_python2_pickle_as_text(mini_root: Path) -> None:
    data = RefCOCO.load(mini_root, "refcoco", "unc")
    ref = data.ref(2)
    assert all(isinstance(k, str) for k in ref)
    assert ref["sentences"][1]["raw"] == "caf\u00e9 person"
    assert data.sentence_ref(4)["ref_id"] == 2
    assert data.stats() == {"dataset": "refcoco", "split_by": "unc", "images": 2, "annotations": 4,
                            "categories": 2, "refs": 3, "sentences": 6,
                            "splits": {"testA": 1, "train": 1, "val": 1}}


def test_indexes_match_refer_reference(mini_root: Path) -> None:
    data = RefCOCO.load(mini_root)  # dataset and split_by inferred: one of each
    plain = pickle.loads(pickle.dumps(data.refs))
    ref_idx = reference_indexes(plain, data.anns)
    for img_id, ids in ref_idx["img_refs"].items():
        assert [r["ref_id"] for r in data.image_refs(img_id)] == ids
        assert data.ref_ids(image_ids=[img_id]) == ids
    for img_id, ids in ref_idx["img_anns"].items():
        assert [a["id"] for a in data.image_anns(img_id)] == ids
    for cat_id, ids in ref_idx["cat_refs"].items():
        assert [r["ref_id"] for r in data.category_refs(cat_id)] == ids
        assert data.ref_ids(cat_ids=[cat_id]) == ids
    for split, ids in ref_idx["split_refs"].items():
        assert data.ref_ids(split=split) == ids
    for sent_id, ref_id in ref_idx["sent_ref"].items():
        assert data.sentence_ref(sent_id)["ref_id"] == ref_id
    for ref_id, ann in ref_idx["ref_ann"].items():
        assert data.ref_ann(ref_id) is ann
        assert data.ann_ref(ann["id"])["ref_id"] == ref_id
    assert data.ann_ref(13) is None
    assert data.ref_ids(split="train", cat_ids=[2]) == []
    assert data.ref_ids(split="testA", image_ids=[1], cat_ids=[2]) == [1]
    assert data.image_refs(999) == []


def test_masks_match_pycocotools_coco_api(mini_root: Path) -> None:
    from pycocotools.coco import COCO

    data = RefCOCO.load(mini_root, "refcoco", "unc")
    coco = COCO(str(mini_root / "refcoco" / "instances.json"))
    for ann in data.anns:
        ours = data.ann_mask(ann["id"])
        theirs = coco.annToMask(coco.anns[ann["id"]])
        assert ours.dtype == np.uint8 and ours.shape == (40, 60)
        np.testing.assert_array_equal(ours, theirs)
        assert abs(int(ours.sum()) - ann["area"]) <= 0.01 * ann["area"] + 1e-9
    # the referred object's mask is its annotation's
    np.testing.assert_array_equal(data.mask(1), data.ann_mask(11))


def test_rle_string_decoder_matches_pycocotools() -> None:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(1)
    shapes = [tuple(rng.integers(1, 50, 2)) for _ in range(20)] + [(480, 640), (427, 640)]
    for h, w in shapes:
        # blocky masks have long runs (multi-character numbers, negative deltas), noisy ones short runs
        block = int(rng.integers(1, 40))
        coarse = rng.random((h // block + 1, w // block + 1)) < rng.random()
        m = np.kron(coarse, np.ones((block, block), bool))[:h, :w].astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(m))
        counts = rle_string_counts(rle["counts"])
        assert sum(counts) == h * w
        flat = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8)
        np.testing.assert_array_equal(flat.reshape((w, h)).T, m)


def test_rle_that_overruns_the_image_is_refused() -> None:
    from pycocotools import mask as mask_utils

    m = np.ones((10, 10), np.uint8)
    big = mask_utils.encode(np.asfortranarray(np.ones((20, 20), np.uint8)))
    with pytest.raises(DataError, match="cover 400 pixels"):
        decode_segmentation({"size": [10, 10], "counts": big["counts"].decode()}, 10, 10)
    with pytest.raises(DataError, match="differs"):
        decode_segmentation({"size": [20, 20], "counts": big["counts"].decode()}, 10, 10)
    with pytest.raises(DataError, match="alphabet"):
        decode_segmentation({"size": [10, 10], "counts": "\x01\x02"}, 10, 10)
    with pytest.raises(DataError, match="far outside"):
        decode_segmentation([[0, 0, 1e12, 0, 5, 5]], 10, 10)
    with pytest.raises(DataError, match="even number"):
        decode_segmentation([[0, 0, 5]], 10, 10)
    with pytest.raises(DataError, match="neither"):
        decode_segmentation("x", 10, 10)
    assert decode_segmentation([[0, 0, 10, 0, 10, 10, 0, 10]], 10, 10).sum() == m.sum()


def test_uncompressed_rle_must_cover_the_image_exactly() -> None:
    # pycocotools would fill the pixels past short runs with whatever memory held, or overflow
    with pytest.raises(DataError, match="cover 3 pixels"):
        decode_segmentation({"size": [4, 4], "counts": [3]}, 4, 4)
    with pytest.raises(DataError, match="cover 23 pixels"):
        decode_segmentation({"size": [4, 4], "counts": [3, 20]}, 4, 4)
    with pytest.raises(DataError, match="non-negative integers"):
        decode_segmentation({"size": [4, 4], "counts": [20, -4]}, 4, 4)
    with pytest.raises(DataError, match="non-negative integers"):
        decode_segmentation({"size": [4, 4], "counts": [3.5, 12.5]}, 4, 4)
    m = decode_segmentation({"size": [4, 4], "counts": [5, 6, 5]}, 4, 4)
    expected = np.zeros(16, np.uint8)
    expected[5:11] = 1
    np.testing.assert_array_equal(m, expected.reshape(4, 4, order="F"))


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    for protocol in (0, 2, 5):
        path.write_bytes(pickle.dumps([{"ref_id": 0, "x": _Evil(str(marker))}], protocol=protocol))
        with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p.*import (posix|os)\.system"):
            safe_load(path)
        assert not marker.exists()
    # a Python 3 bytes object pickles through _codecs.encode: refused too, nothing imported
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):
        safe_load_bytes(pickle.dumps([b"abc"], protocol=2), "x.p")
    with pytest.raises(UnsafePickleError, match="persistent id"):
        safe_load_bytes(b"\x80\x02P0\n.", "x.p")


def test_py2_latin1_and_bad_pickles(tmp_path: Path) -> None:
    got = safe_load_bytes(dumps_py2([{b"raw": b"caf\xe9", b"ok": "\u00e9t\u00e9", b"n": 2**40}]))
    assert got == [{"raw": "caf\u00e9", "ok": "\u00e9t\u00e9", "n": 2**40}]
    with pytest.raises(DataError, match="not a readable pickle"):
        safe_load_bytes(b"\x80\x02]q\x00(K\x01", "trunc.p")
    with pytest.raises(DataError, match="not a readable pickle"):
        safe_load_bytes(b"garbage", "g.p")
    with pytest.raises(DataError, match="refs file not found"):
        safe_load(tmp_path / "nope.p")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    root = make_mini_refcoco(tmp_path / "a")
    with pytest.raises(DataError, match=r"refs file not found: .*refs\(google\)\.p \(found: refs\(unc\)\.p\)"):
        RefCOCO.load(root, "refcoco", "google")
    with pytest.raises(InputError, match="refcoco has no split_by 'umd'"):
        RefCOCO.load(root, "refcoco", "umd")
    with pytest.raises(DataError, match="RefCOCO root not found"):
        RefCOCO.load(tmp_path / "missing", "refcoco", "unc")
    (root / "refcoco" / "instances.json").write_text('{"images": [1,')
    with pytest.raises(DataError, match=r"instances.json: malformed JSON at line 1"):
        RefCOCO.load(root, "refcoco", "unc")
    (root / "refcoco" / "instances.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DataError, match="instances.json"):
        RefCOCO.load(root, "refcoco", "unc")
    (root / "refcoco" / "instances.json").unlink()
    with pytest.raises(DataError, match="instances file not found"):
        RefCOCO.load(root, "refcoco", "unc")


def _rewrite_instances(root: Path, fn) -> None:
    path = root / "refcoco" / "instances.json"
    inst = json.loads(path.read_text())
    fn(inst)
    path.write_text(json.dumps(inst))


def test_inconsistent_data_is_named(tmp_path: Path) -> None:
    root = make_mini_refcoco(tmp_path / "a")
    _rewrite_instances(root, lambda inst: inst["annotations"].pop(0))
    with pytest.raises(DataError, match="point at a missing annotation; first: ref 0 has ann_id 10"):
        RefCOCO.load(root)
    root = make_mini_refcoco(tmp_path / "b")
    _rewrite_instances(root, lambda inst: inst["images"].append(dict(inst["images"][0])))
    with pytest.raises(DataError, match="duplicate image id 1"):
        RefCOCO.load(root)
    root = make_mini_refcoco(tmp_path / "d")
    _rewrite_instances(root, lambda inst: inst["categories"].pop(0))
    with pytest.raises(DataError, match="category missing from 'categories'; first: annotation 10 has category_id 1"):
        RefCOCO.load(root)
    root = make_mini_refcoco(tmp_path / "e")
    _rewrite_instances(root, lambda inst: inst["annotations"].append([1, 2]))
    with pytest.raises(DataError, match="an? annotation is not an object"):
        RefCOCO.load(root)
    root = make_mini_refcoco(tmp_path / "f")
    for bad in ([{"ref_id": 0}, 7], [7, {"ref_id": 0}]):  # a missing field and a non-object both present
        (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(bad, protocol=2))
        with pytest.raises(DataError, match="a ref is not an object"):
            RefCOCO.load(root)
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 0}], protocol=2))
    with pytest.raises(DataError, match="a ref has no 'ann_id' field"):
        RefCOCO.load(root)
    root = make_mini_refcoco(tmp_path / "c")
    _rewrite_instances(root, lambda inst: inst.pop("categories"))
    with pytest.raises(DataError, match="under 'categories'"):
        RefCOCO.load(root)


def test_lookups_refuse_unknown_ids_and_splits(mini_root: Path) -> None:
    data = RefCOCO.load(mini_root)
    with pytest.raises(InputError, match="has no split 'testC'; it has: testA, train, val"):
        data.ref_ids(split="testC")
    with pytest.raises(InputError, match="no ref with id 77"):
        data.ref(77)
    with pytest.raises(InputError, match="no ref with id 77"):
        data.mask(77)


def test_images_are_checked(mini_root: Path) -> None:
    from PIL import Image

    data = RefCOCO.load(mini_root)
    assert data.load_image(1).size == (60, 40)
    path = data.image_path(2)
    Image.new("RGB", (10, 10)).save(path, format="JPEG")
    with pytest.raises(DataError, match="image is 10x10 but instances.json says 60x40"):
        data.load_image(2)
    path.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="not a readable image"):
        data.load_image(2)
    path.unlink()
    with pytest.raises(DataError, match="image not found"):
        data.load_image(2)


def test_image_file_names_cannot_leave_the_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    root = make_mini_refcoco(tmp_path / "r")
    outside = tmp_path / "private.png"
    Image.new("RGB", (60, 40), (1, 2, 3)).save(outside)
    names = {1: "../../../../../private.png", 2: str(outside)}
    _rewrite_instances(root, lambda inst: [im.update(file_name=names[im["id"]]) for im in inst["images"]])
    data = RefCOCO.load(root)
    for image_id in (1, 2):
        with pytest.raises(DataError, match="points outside"):
            data.load_image(image_id)
    _rewrite_instances(root, lambda inst: inst["images"][0].pop("file_name"))
    with pytest.raises(DataError, match="image 1: no file name"):
        RefCOCO.load(root).image_path(1)


def test_oversized_image_refused_before_decoding(tmp_path: Path) -> None:
    from PIL import Image

    from refcoco_edit.imaging.files import open_image

    path = tmp_path / "big.png"
    Image.new("1", (3000, 3000)).save(path)  # tiny file, 9 megapixels
    with pytest.raises(DataError, match="over the limit"):
        open_image(path, max_pixels=1_000_000)
    assert open_image(path).size == (3000, 3000)


def test_one_pixel_limit_for_files_and_bytes(tmp_path: Path) -> None:
    """A 12000x9000 PNG of a few hundred kilobytes is refused from its header, path or bytes, with
    the source named; the store's blobs and the export open images through the same function."""
    import io
    import time

    from PIL import Image

    from refcoco_edit.imaging.files import MAX_PIXELS, open_image
    from refcoco_edit.store.blobs import BlobStore

    buf = io.BytesIO()
    Image.new("1", (12000, 9000)).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) < 400_000 and 12000 * 9000 > MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"bomb\.png: image .*over the (pixel )?limit"):
        open_image(path)
    with pytest.raises(DataError, match="upload x: image .*over the (pixel )?limit"):
        open_image(data, what="upload x", load=False)
    blobs = BlobStore(tmp_path / "blobs")
    with pytest.raises(DataError, match="blob abcdef000000: image .*over the (pixel )?limit"):
        blobs.put_png("abcdef" + "0" * 58, data)
    assert time.perf_counter() - t0 < 1.0  # nothing was decoded
    with pytest.raises(DataError, match="cell: not a readable image"):
        open_image(b"\x89PNG not really", what="cell")
    small = io.BytesIO()
    Image.new("L", (4, 3), 7).save(small, format="PNG")
    im = open_image(small.getvalue(), mode=None)
    assert im.mode == "L" and im.size == (4, 3) and open_image(small.getvalue()).mode == "RGB"


def shared_nesting_pickle(depth: int) -> bytes:
    """A Python 2 pickle of `depth` nested pairs, each level two references to the one below, with a
    non-UTF-8 string at the bottom: a few hundred bytes standing for 2**depth leaves."""
    out = bytearray(b"\x80\x02")
    out += b"](U\x01\xffU\x01\xffeq\x000"  # memo 0 = [b"\xff", b"\xff"]
    for level in range(1, depth + 1):
        out += b"](h" + bytes([level - 1]) + b"h" + bytes([level - 1]) + b"eq" + bytes([level]) + b"0"
    out += b"h" + bytes([depth]) + b"."
    return bytes(out)


def test_shared_references_are_converted_once() -> None:
    import time

    data = shared_nesting_pickle(30)
    assert len(data) < 500
    t0 = time.perf_counter()
    got = safe_load_bytes(data, "shared.p")
    assert time.perf_counter() - t0 < 1.0  # each level once, not 2**30 leaves
    node = got
    for _ in range(30):
        assert node[0] is node[1]  # the sharing is kept
        node = node[0]
    assert node == ["\u00ff", "\u00ff"]


def test_deep_nesting_is_refused_clearly() -> None:
    with pytest.raises(DataError, match=r"deep\.p: not a refs file: containers nested deeper than"):
        safe_load_bytes(shared_nesting_pickle(200), "deep.p")


def test_crafted_instances_sizes_are_refused_before_pycocotools(tmp_path: Path) -> None:
    """A 200000x200000 image made pycocotools overflow and crash the process; every size it would see
    is checked first and refused with the annotation's name."""
    root = make_mini_refcoco(tmp_path / "r")
    _rewrite_instances(root, lambda inst: inst["images"][0].update(width=200000, height=200000))
    data = RefCOCO.load(root)
    with pytest.raises(DataError, match=r"annotation 10: image size 200000x200000 is outside the limits"):
        data.ann_mask(10)
    for w, h, match in ((60.5, 40, "not an integer"), ("60", 40, "not an integer"), (0, 40, "outside the limits"),
                        (16384, 16384, "over the limit of")):
        _rewrite_instances(root, lambda inst, w=w, h=h: inst["images"][0].update(width=w, height=h))
        with pytest.raises(DataError, match=f"annotation 10: .*{match}"):
            RefCOCO.load(root).ann_mask(10)
    with pytest.raises(DataError, match="more runs than the image has pixels"):
        decode_segmentation({"size": [2, 2], "counts": [0] * 6 + [4]}, 2, 2)
    with pytest.raises(DataError, match="more than 200000 coordinates"):
        decode_segmentation([[1.0] * 200_002], 100, 100)
    zigzag = [v for i in range(4000) for v in ((0, 0) if i % 2 else (400, 400))]
    with pytest.raises(DataError, match="polygon edges run .* over the limit"):
        decode_segmentation([zigzag], 100, 100)
    with pytest.raises(DataError, match="polygons must be a list of coordinate lists"):
        decode_segmentation([5, 6], 100, 100)
