"""A small RefCOCO in the REFER layout, made in the test (refs as a Python 2 pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.refcoco_edit.py2pickle import dumps_py2


def _b(s: str) -> bytes:
    return s.encode("utf-8")


def make_mini_refcoco(root: Path, *, py2: bool = True, dataset: str = "refcoco", split_by: str = "unc") -> Path:
    """Two images, four annotations (polygon, compressed RLE, uncompressed RLE), three refs."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    h, w = 40, 60
    rle_mask = np.zeros((h, w), np.uint8, order="F")
    rle_mask[5:15, 30:50] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode("ascii")
    # uncompressed RLE: column-major runs of the block [20:30, 10:20]
    un_mask = np.zeros((h, w), np.uint8)
    un_mask[20:30, 10:20] = 1
    flat = un_mask.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": w, "height": h},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": w, "height": h},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [2, 2, 20, 20], "area": 400.0,
             "segmentation": [[2, 2, 22, 2, 22, 22, 2, 22]]},
            {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [30, 5, 20, 10],
             "area": float(rle_mask.sum()), "segmentation": rle},
            {"id": 12, "image_id": 2, "category_id": 1, "iscrowd": 1, "bbox": [10, 20, 10, 10],
             "area": float(un_mask.sum()), "segmentation": {"size": [h, w], "counts": runs}},
            {"id": 13, "image_id": 2, "category_id": 2, "iscrowd": 0, "bbox": [40, 20, 10, 10], "area": 100.0,
             "segmentation": [[40, 20, 50, 20, 50, 30, 40, 30]]},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 2, "name": "cup", "supercategory": "kitchen"}],
    }

    def sent(i: int, text: str) -> dict:
        toks = text.lower().split()
        return {"sent_id": i, "raw": text, "sent": " ".join(toks), "tokens": toks}

    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "category_id": 1, "split": "train",
         "file_name": "COCO_train2014_000000000001_10.jpg", "sent_ids": [0, 1],
         "sentences": [sent(0, "man on the left"), sent(1, "the left guy")]},
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "category_id": 2, "split": "testA",
         "file_name": "COCO_train2014_000000000001_11.jpg", "sent_ids": [2],
         "sentences": [sent(2, "cup at top right")]},
        {"ref_id": 2, "ann_id": 12, "image_id": 2, "category_id": 1, "split": "val",
         "file_name": "COCO_train2014_000000000002_12.jpg", "sent_ids": [3, 4, 5],
         "sentences": [sent(3, "person"), sent(4, "caf\u00e9 person"), sent(5, "middle one")]},
    ]
    ds = root / dataset
    ds.mkdir(parents=True)
    (ds / "instances.json").write_text(json.dumps(instances))
    if py2:
        def to_py2(o):
            if isinstance(o, str):
                return _b(o)
            if isinstance(o, list):
                return [to_py2(v) for v in o]
            if isinstance(o, dict):
                return {to_py2(k): to_py2(v) for k, v in o.items()}
            return o
        data = dumps_py2(to_py2(refs))
    else:
        import pickle
        data = pickle.dumps(refs, protocol=2)
    (ds / f"refs({split_by}).p").write_bytes(data)
    img_dir = root / "images/mscoco/images/train2014"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for im in instances["images"]:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / im["file_name"], format="JPEG")
    return root


@pytest.fixture
def mini_root(tmp_path: Path) -> Path:
    return make_mini_refcoco(tmp_path / "refer")
