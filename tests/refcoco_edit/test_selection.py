"""Source-object selection: measures against an independent calculation, RefShapes agreement, CLI."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from refcoco_edit.cli import build_parser, run_cli
from refcoco_edit.curation.selection import (
    SelectionThresholds,
    colour_histogram,
    histogram_intersection,
    select_candidates,
    shape_descriptors,
)
from refcoco_edit.refer.reader import RefCOCO

# ------------------------------------------------------------------------------ a hand-made scene

RED, BLUE, GREEN, BROWN, WHITE = (220, 30, 30), (30, 30, 220), (30, 200, 30), (120, 80, 40), (250, 250, 250)
# (image_id, width, height), then objects: (ann_id, image_id, category, colour, mask maker)
IMAGES = [(1, 200, 100), (2, 100, 100), (3, 100, 50)]
CATEGORIES = ["person", "cup", "dog", "bicycle", "cat"]


def rect(x0: int, y0: int, x1: int, y1: int):
    def make(h: int, w: int) -> np.ndarray:
        m = np.zeros((h, w), np.uint8)
        m[y0:y1, x0:x1] = 1
        return m
    return make


def triangle(x0: int, y0: int, size: int):
    def make(h: int, w: int) -> np.ndarray:
        m = np.zeros((h, w), np.uint8)
        for i in range(size):
            m[y0 + i, x0:x0 + i + 1] = 1
        return m
    return make


OBJECTS = [
    (1, 1, "person", RED, rect(10, 20, 70, 80)),  # 3600 px of 20000
    (2, 1, "person", BLUE, rect(150, 30, 170, 60)),
    (3, 1, "cup", RED, rect(100, 10, 108, 18)),  # 64 px: 0.32% of the image, under a tenth of ann 1
    (4, 1, "dog", RED, rect(100, 50, 130, 80)),
    (5, 1, "bicycle", GREEN, triangle(175, 70, 25)),
    (6, 2, "dog", BROWN, rect(15, 15, 85, 85)),  # 49% of the image, centred
    (7, 2, "cat", WHITE, rect(0, 0, 4, 4)),  # a speck
    (8, 3, "person", BLUE, rect(0, 0, 100, 35)),  # 70% of the image
    (9, 3, "person", GREEN, rect(80, 40, 90, 48)),
]


def build_scene(root: Path) -> RefCOCO:
    from PIL import Image
    from pycocotools import mask as mask_utils

    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns, refs = [], [], []
    pixels = {}
    for image_id, w, h in IMAGES:
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": w, "height": h})
        pixels[image_id] = rng.integers(120, 136, (h, w, 3)).astype(np.uint8)  # grey, in one colour bin
    for ann_id, image_id, cat, colour, make in OBJECTS:
        _, w, h = IMAGES[image_id - 1]
        m = make(h, w)
        pixels[image_id][m.astype(bool)] = colour
        rle = mask_utils.encode(np.asfortranarray(m))
        ys, xs = np.nonzero(m)
        anns.append({"id": ann_id, "image_id": image_id, "category_id": CATEGORIES.index(cat) + 1, "iscrowd": 0,
                     "area": float(m.sum()), "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                     "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                              float(ys.max() - ys.min() + 1)]})
        refs.append({"ref_id": ann_id * 10, "ann_id": ann_id, "image_id": image_id,
                     "category_id": CATEGORIES.index(cat) + 1, "split": "train",
                     "sentences": [{"sent_id": ann_id, "sent": f"{cat} {ann_id}", "raw": f"{cat} {ann_id}"}]})
    for image_id, px in pixels.items():
        Image.fromarray(px).save(img_dir / f"{image_id}.png")
    cats = [{"id": i + 1, "name": n, "supercategory": n} for i, n in enumerate(CATEGORIES)]
    return RefCOCO("hand", "made", refs, anns, images, cats, image_dir=img_dir)


@pytest.fixture
def scene(tmp_path: Path) -> RefCOCO:
    return build_scene(tmp_path / "scene")


def reference_measures(data: RefCOCO, ref_id: int, th: SelectionThresholds) -> dict:
    """The two rules computed the plain way: one object at a time, histograms by numpy.histogramdd."""
    ref = data.ref(ref_id)
    ann = data.ann(ref["ann_id"])
    img = data.image(ref["image_id"])
    W, H = img["width"], img["height"]
    pixels = np.asarray(data.load_image(img["id"]))
    edges = [np.linspace(0, 256, th.histogram_bins + 1)] * 3

    def hist(a) -> np.ndarray:
        h, _ = np.histogramdd(pixels[data.ann_mask(a["id"]).astype(bool)].astype(float), bins=edges)
        return h.ravel() / h.sum()

    mask = data.ann_mask(ann["id"])
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    area = float(mask.sum())
    share = area / (W * H)
    centrality = max(0.0, 1 - math.hypot(cx - W / 2, cy - H / 2) / (math.hypot(W, H) / 2))
    others = [a for a in data.image_anns(img["id"]) if a["id"] != ann["id"]]
    of_note = [a for a in others if a["area"] >= max(th.note_min_share * W * H, th.note_min_relative * area)]
    largest = all(a["area"] <= area for a in others)
    rule1 = bool(of_note) and share < th.max_area_share and not (
        largest and share >= th.subject_area_share and centrality >= th.subject_centrality)
    similar = []
    colour = {}
    for a in others:
        c = float(sum(min(p, q) for p, q in zip(hist(ann), hist(a))))
        s = 1 - float(np.mean(np.abs(shape_descriptors(mask) - shape_descriptors(data.ann_mask(a["id"])))))
        colour[a["id"]] = c
        appearance = th.colour_weight * c + (1 - th.colour_weight) * s
        alike = c >= th.colour_threshold and appearance >= th.appearance_threshold
        if a["category_id"] == ann["category_id"] or alike:
            similar.append(a["id"])
    return {"area_share": share, "centrality": centrality, "others_of_note": len(of_note), "objects": len(others),
            "largest": largest, "rule1": rule1, "similar": similar, "colour": colour,
            "same_category": sum(a["category_id"] == ann["category_id"] for a in others)}


def test_measures_match_an_independent_calculation(scene: RefCOCO) -> None:
    th = SelectionThresholds()
    cands = select_candidates(scene)
    assert [c.ref_id for c in cands] == scene.ref_ids()
    for c in cands:
        ref = reference_measures(scene, c.ref_id, th)
        m = c.measures
        assert m["area_share"] == pytest.approx(ref["area_share"])
        assert m["centrality"] == pytest.approx(ref["centrality"])
        for key in ("others_of_note", "objects", "largest", "same_category"):
            assert m[key] == ref[key], (c.ref_id, key)
        assert c.not_sole_subject == ref["rule1"], c.reasons
        assert sorted(c.similar_anns) == sorted(ref["similar"]), c.ref_id
        assert c.has_similar == bool(ref["similar"]) and c.eligible == (ref["rule1"] and bool(ref["similar"]))
        if m["most_alike_ann"] is not None:
            assert m["colour_similarity"] == pytest.approx(ref["colour"][m["most_alike_ann"]])
        assert m["appearance_measured"] is True and len(c.reasons) == 2


def test_the_scene_reads_as_intended(scene: RefCOCO) -> None:
    c = {x.ann_id: x for x in select_candidates(scene)}
    assert c[1].eligible and c[1].similar_anns == [2, 3, 4]  # person 2 by category, red 3 and 4 by looks
    assert "1 other person(s)" in c[1].reasons[1] and "looks alike" in c[1].reasons[1]
    assert c[1].measures["others_of_note"] == 2  # the 64-px cup and the 325-px bicycle are under a tenth of it
    assert not c[5].has_similar and c[5].reasons[1].startswith("no similar object: no other bicycle")
    assert not c[6].not_sole_subject and c[6].reasons[0].startswith("sole prominent subject: the largest object")
    assert not c[6].eligible and not c[7].eligible  # the speck has nothing like it either
    assert not c[8].not_sole_subject and "covers 70.0% of the image" in c[8].reasons[0] and c[8].has_similar
    assert c[9].eligible


def test_a_lone_object_is_its_image_s_subject(scene: RefCOCO) -> None:
    alone = RefCOCO("x", "y", [r for r in scene.refs if r["ann_id"] == 1], [a for a in scene.anns if a["id"] == 1],
                    scene.images, scene.categories, image_dir=scene.image_dir)
    (c,) = select_candidates(alone)
    assert not c.eligible and c.similar_anns == [] and c.measures["objects"] == 0
    assert c.measures["colour_similarity"] is None and c.measures["most_alike_ann"] is None
    assert c.reasons == ["sole prominent subject: no other object of note (0 other object(s), none covering 0.2% "
                         "of the image and 10.0% of this one's area)", "no similar object: no other person"]
    assert select_candidates(alone, []) == []


def test_thresholds_change_the_verdicts(scene: RefCOCO) -> None:
    strict = select_candidates(scene, thresholds=SelectionThresholds(max_area_share=0.001))
    assert not any(c.not_sole_subject for c in strict)
    colour_blind = select_candidates(scene, thresholds=SelectionThresholds(colour_threshold=1.01))
    assert {c.ann_id: c.similar_anns for c in colour_blind}[1] == [2]


def test_images_are_read_once_and_missing_ones_degrade(scene: RefCOCO, monkeypatch) -> None:
    calls: list[int] = []
    original = RefCOCO.load_image

    def counting(self, image_id):
        calls.append(image_id)
        return original(self, image_id)

    monkeypatch.setattr(RefCOCO, "load_image", counting)
    select_candidates(scene)
    assert sorted(calls) == [1, 2, 3]
    calls.clear()
    select_candidates(scene, [10, 20])
    assert calls == [1]

    (scene.image_dir / "2.png").unlink()
    (scene.image_dir / "3.png").write_bytes(b"not a png")
    c = {x.ann_id: x for x in select_candidates(scene)}
    assert c[1].measures["appearance_measured"] and c[1].similar_anns == [2, 3, 4]
    for a in (6, 7):
        assert not c[a].measures["appearance_measured"] and c[a].measures["colour_similarity"] is None
        assert c[a].reasons[2] == "appearance not measured (image file missing): only the category test ran"
    assert "image unreadable" in c[8].reasons[2] and c[8].similar_anns == [9]  # the category test still ran


def test_without_images_only_the_category_counts(scene: RefCOCO, tmp_path: Path) -> None:
    c = {x.ann_id: x for x in select_candidates(scene, use_images=False)}
    assert c[1].similar_anns == [2] and c[3].similar_anns == [] and not c[3].eligible
    assert all("images not used" in x.reasons[2] for x in c.values())
    shutil.rmtree(scene.image_dir)
    c = {x.ann_id: x for x in select_candidates(scene)}
    assert c[4].similar_anns == [] and "not found" in c[4].reasons[2]


def test_shape_descriptors_of_known_shapes() -> None:
    m = rect(10, 10, 50, 30)(60, 60)  # 40 x 20
    extent, solidity, circ, aspect = shape_descriptors(m)
    assert extent == 1.0 and solidity == pytest.approx(1.0, abs=0.01) and aspect == 0.5
    assert circ == pytest.approx(math.pi * 800 / 60**2, rel=0.1)
    yy, xx = np.mgrid[:80, :80]
    disc = ((yy - 40) ** 2 + (xx - 40) ** 2 <= 30**2).astype(np.uint8)
    extent, solidity, circ, aspect = shape_descriptors(disc)
    assert extent == pytest.approx(math.pi * 30**2 / 61**2, rel=0.02)
    assert solidity > 0.97 and circ > 0.85 and aspect == 1.0
    assert np.isnan(shape_descriptors(np.zeros((5, 5), np.uint8))).all()


def test_colour_histogram_and_intersection() -> None:
    px = np.array([[0, 0, 0], [255, 255, 255], [250, 250, 250], [10, 70, 200]], np.uint8)
    h = colour_histogram(px, 4)
    assert h.sum() == pytest.approx(1) and h[0] == 0.25 and h[63] == 0.5 and h[0 * 16 + 1 * 4 + 3] == 0.25
    assert histogram_intersection(h, h) == pytest.approx(1.0)
    assert histogram_intersection(h, colour_histogram(px[:1], 4)) == pytest.approx(0.25)
    assert colour_histogram(px[:0], 4).sum() == 0


# ------------------------------------------------------------------------------ RefShapes agreement


@pytest.fixture(scope="module")
def sample() -> RefCOCO:
    return RefCOCO.load("sample")


@pytest.fixture(scope="module")
def sample_truth(sample: RefCOCO) -> dict:
    return json.loads((Path(sample.source) / "edits.json").read_text())


def test_rules_agree_with_refshapes_distractors(sample: RefCOCO, sample_truth: dict) -> None:
    cands = select_candidates(sample)
    assert len(cands) == len(sample.refs) > 50
    for c in cands:
        assert sorted(c.similar_anns) == sorted(sample_truth["distractors"][str(c.ref_id)]), c.reasons
        assert c.has_similar == bool(sample_truth["distractors"][str(c.ref_id)])
        assert c.measures["appearance_measured"]
        assert c.not_sole_subject  # RefShapes objects are small, 2-6 per scene
        assert c.eligible == c.has_similar


def test_every_refshapes_object_agrees(sample: RefCOCO, sample_truth: dict) -> None:
    """A ref for every object, so objects without a twin are judged too: similar <=> same kind or colour."""
    objects = sample_truth["objects"]
    refs = [{"ref_id": a["id"], "ann_id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
             "split": "train", "sentences": []} for a in sample.anns]
    every = RefCOCO(sample.dataset, sample.split_by, refs, sample.anns, sample.images, sample.categories,
                    image_dir=sample.image_dir)
    negatives = 0
    for c in select_candidates(every):
        me = objects[str(c.ann_id)]
        twins = sorted(int(k) for k, o in objects.items() if int(k) != c.ann_id and o["image_id"] == me["image_id"]
                       and (o["kind"] == me["kind"] or o["colour"] == me["colour"]))
        assert sorted(c.similar_anns) == twins, (c.ann_id, c.reasons)
        negatives += not twins
    assert negatives > 0  # the check covered objects with no similar object


# ------------------------------------------------------------------------------ CLIP (tiny random weights)


def test_optional_clip_similarity(scene: RefCOCO) -> None:
    pytest.importorskip("transformers")
    c = {x.ann_id: x for x in select_candidates(scene, [10, 50], clip_model="tiny-clip",
                                                  thresholds=SelectionThresholds(clip_threshold=-1.0))}
    sim = c[1].measures["clip_similarity"]
    assert sim is not None and -1.0 <= sim <= 1.0 + 1e-6
    assert "CLIP similarity" in c[5].reasons[1] and c[5].has_similar  # every pair passes a threshold of -1


# ------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli():
    parser = build_parser({"candidates": "refcoco_edit.commands.candidates"})
    return lambda argv: run_cli(parser, argv)


def test_cli_candidates_json_lines(cli, mini_root: Path, capsys) -> None:
    assert cli(["candidates", "--refcoco", str(mini_root), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["ref_id"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert {"ref_id", "eligible", "measures", "reasons", "similar_anns", "not_sole_subject",
                "has_similar"} <= set(r)
        assert isinstance(r["eligible"], bool) and len(r["reasons"]) >= 2
    assert cli(["candidates", "--refcoco", str(mini_root), "--split", "val", "--json", "--no-images"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["ref_id"] for r in rows] == [2] and rows[0]["measures"]["appearance_measured"] is False


def test_cli_candidates_text_and_errors(cli, capsys) -> None:
    assert cli(["candidates", "--refcoco", "sample", "--eligible-only"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"{len(out) - 1} of ") and "refs eligible" in out[-1]
    assert cli(["candidates", "--refcoco", "sample", "--threshold", "nope=1"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err
    assert cli(["candidates", "--refcoco", "sample", "--threshold", "max_area_share=x"]) == 2
    assert "is not a number" in capsys.readouterr().err
    assert cli(["candidates", "--refcoco", "sample", "--ref-id", "0", "--json",
                "--threshold", "max-area-share=0.0001"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["not_sole_subject"] is False and "limit 0.0%" in row["reasons"][0]
    assert cli(["candidates", "--refcoco", "sample", "--ref-id", "123456"]) == 2


# ------------------------------------------------------------------------------ size


@pytest.mark.slow
def test_full_size_selection_under_a_minute(tmp_path: Path) -> None:
    from refcoco_edit.refshapes import generate

    generate(tmp_path, num_images=20000, seed=0, write_images=False)
    data = RefCOCO.load(tmp_path)
    t0 = time.perf_counter()
    cands = select_candidates(data)
    elapsed = time.perf_counter() - t0
    assert len(data.anns) >= 50000 and len(cands) == len(data.refs)
    assert elapsed < 60, f"selection over {len(data.anns)} objects took {elapsed:.1f} s"
