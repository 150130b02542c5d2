"""The training manifest: the pictures a run's stages hold, by id and by content hash, checked against
the RefShapes pictures loaded independently; the overlap with an evaluation set."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("datasets")

from refcoco_edit.dataset.synth import picture_hash  # noqa: E402
from refcoco_edit.errors import InputError  # noqa: E402
from refcoco_edit.refer.reader import RefCOCO  # noqa: E402
from referdiffusion.train.config import load_config  # noqa: E402
from referdiffusion.train.manifest import (  # noqa: E402
    MANIFEST,
    MANIFEST_SCHEMA,
    build_manifest,
    overlap,
    read_manifest,
    write_manifest,
)


@pytest.fixture(scope="module")
def shapes() -> RefCOCO:
    return RefCOCO.load("sample")


def _hash(data: RefCOCO, image_id: int) -> str:
    return picture_hash(np.asarray(data.load_image(image_id).convert("RGB")))


def test_manifest_lists_the_stages_pictures_with_their_pixel_hashes(tiny_cache, shapes, tmp_path):
    manifest = build_manifest(load_config("tiny"))
    assert manifest["schema"] == MANIFEST_SCHEMA
    assert [s["name"] for s in manifest["stages"]] == ["synth", "edit"]
    train_ids = {shapes.ref(r)["image_id"] for r in shapes.ref_ids(split="train")}
    synth_ids = set(manifest["stages"][0]["image_ids"])
    assert synth_ids == train_ids  # stage 1: every train picture, no other
    assert set(manifest["stages"][1]["image_ids"]) <= train_ids
    pictures = {int(k): v for k, v in manifest["pictures"].items()}
    assert set(pictures) == train_ids
    # stage-1 rows give the hash synth recorded, stage-2 rows the hash of their decoded source: both must be
    # the hash of the untouched picture read from the RefShapes files
    for image_id, digest in pictures.items():
        assert digest == _hash(shapes, image_id), image_id
    assert manifest["preprocess"] == {"resize": "aspect", "size": 64}
    write_manifest(tmp_path / MANIFEST, manifest)
    assert read_manifest(tmp_path) == manifest
    assert read_manifest(tmp_path / "absent") is None


def test_overlap_by_id_and_by_hash(tiny_cache, shapes):
    manifest = build_manifest(load_config("tiny"))
    test_ids = sorted({shapes.ref(r)["image_id"] for r in shapes.ref_ids(split="testA")})
    evaluation = {i: _hash(shapes, i) for i in test_ids}
    clean = overlap(manifest, evaluation, {i: 2 for i in test_ids})
    assert (clean["count"], clean["image_ids"], clean["samples"]) == (0, [], 0)
    assert clean["evaluation_pictures"] == len(test_ids)
    seen_id = int(next(iter(manifest["pictures"])))
    renamed = 10**9  # a training picture under another id: found by its pixels
    evaluation.update({seen_id: _hash(shapes, seen_id), renamed: _hash(shapes, seen_id)})
    dirty = overlap(manifest, evaluation, {seen_id: 3, renamed: 1})
    assert dirty["by_id"] == [seen_id] and dirty["by_hash"] == [seen_id, renamed]
    assert (dirty["count"], dirty["image_ids"], dirty["samples"]) == (2, [seen_id, renamed], 4)
    # the same number on a picture with other pixels (another dataset numbered alike) is listed, not counted
    collision = overlap(manifest, {seen_id: "f" * 64})
    assert (collision["count"], collision["by_id"], collision["same_id_other_pixels"]) == (0, [], [seen_id])
    unknown = overlap(manifest, {seen_id: None})  # no hash on the evaluation side: the id alone counts
    assert (unknown["count"], unknown["by_id"]) == (1, [seen_id])


def test_a_run_allowed_evaluation_splits_records_them(tiny_cache, shapes, tmp_path):
    from refcoco_edit.dataset.synth import SynthConfig, synth_dataset

    synth_dataset(shapes, tmp_path / "all", SynthConfig(split=None, allow_eval_splits=True), save_to_disk=False)
    cfg = load_config("tiny", [f"stages.synth.dataset={tmp_path / 'all'}", "stages.synth.split=null",
                               "stages.synth.allow_eval_splits=true"])
    manifest = build_manifest(cfg)
    test_ids = sorted({shapes.ref(r)["image_id"] for r in shapes.ref_ids(split="testA")})
    found = overlap(manifest, {i: _hash(shapes, i) for i in test_ids})
    assert found["image_ids"] == test_ids and found["by_id"] == found["by_hash"] == test_ids
    with pytest.raises(InputError, match="evaluation split"):
        build_manifest(load_config("tiny", [f"stages.synth.dataset={tmp_path / 'all'}", "stages.synth.split=null"]))
