"""`refcoco-edit build`: samples, auto-accept policies, resume after SIGKILL, failures, tiny models.

Ground truth comes from the RefShapes files themselves (edits.json and the edited PNGs), read here
independently of the build code.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refcoco_edit import cli
from refcoco_edit.curation.build import (
    ATTRIBUTE_COLOURS,
    ORACLE_MAX_MAD,
    ORACLE_MAX_RATIO,
    BuildConfig,
    beside_region,
    build,
    unit_key,
)
from refcoco_edit.errors import InputError
from refcoco_edit.imaging.masks import background_changes
from refcoco_edit.pipelines.base import Candidate as PipeCandidate
from refcoco_edit.pipelines.base import dilate
from refcoco_edit.pipelines.classical_inpaint import DEFAULT_DILATE
from refcoco_edit.refer.reader import RefCOCO, decode_segmentation
from refcoco_edit.refshapes import sample_root
from refcoco_edit.store import Store

REPO = Path(__file__).resolve().parents[2]
DEMO = ["--pipelines", "synthetic,classical_inpaint", "--auto-accept", "oracle"]


# ------------------------------------------------------------------------------ helpers


def _gt_edits() -> dict[tuple[int, str], dict]:
    raw = json.loads((sample_root() / "refshapes" / "edits.json").read_text())
    return {(e["ref_id"], e["edit_type"]): e for e in raw["edits"]}


def _gt_image(rec: dict) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(sample_root() / "refshapes" / rec["edited_file"]).convert("RGB"))


def _gt_mask(rec: dict) -> np.ndarray:
    h, w = rec["edit_mask"]["size"]
    return decode_segmentation(rec["edit_mask"], h, w)


def _run_cli(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert cli.main(["build", *args, "--no-progress", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _snapshot(db: Path) -> dict:
    """Everything a build decides, per key: no timestamps, no row ids."""
    out = {}
    with Store.open(db) as st:
        for rec in st.list_samples(images=False, failed=None):
            s = rec.sample
            cands = [(c.image_hash, c.seed, json.dumps(c.params, sort_keys=True), c.model, c.score, c.chosen,
                      c.edit_mask.tobytes()) for c in st.get_candidates(s.sample_id, images=False)]
            reviews = [(r.reviewer, r.decision, r.comment) for r in st.get_reviews(s.sample_id)]
            assert rec.key not in out, f"duplicate key {rec.key}"
            out[rec.key] = dict(
                sample_id=s.sample_id, status=s.status, reviewer=s.reviewer, annotator=s.annotator,
                prompt=s.prompt, spans=(s.referring_spans, s.edit_spans), target=s.target, blobs=rec.blobs,
                edit_mask=None if s.edit_mask is None else s.edit_mask.tobytes(), error=rec.error,
                generation=json.dumps(s.generation, sort_keys=True), candidates=cands, reviews=reviews)
        assert st.check()["ok"]
    return out


class FakePipeline:
    """A weight-free stand-in: `make(image, mask, i)` gives candidate i's pixels; calls are recorded."""

    def __init__(self, name: str, make, scores=None, fail=None):
        self.name, self.model = name, f"fake-{name}"
        self.make, self.scores, self.fail = make, scores, fail
        self.calls: list[dict] = []

    def generate(self, image, mask, **opts):
        from PIL import Image

        self.calls.append(opts)
        src = np.asarray(image)
        if self.fail is not None and self.fail(np.asarray(mask)):
            raise RuntimeError("boom")
        out = []
        for i in range(opts.get("num", 1)):
            pixels = self.make(src, np.asarray(mask), i)
            changed = (np.abs(pixels.astype(int) - src.astype(int)).max(axis=2) > 0).astype(np.uint8)
            out.append(PipeCandidate(image=Image.fromarray(pixels), seed=opts.get("seed", 0) + i,
                                     params={"pipeline": self.name, "i": i}, model=self.model,
                                     edit_mask=changed if changed.any() else np.asarray(mask, np.uint8),
                                     score=None if self.scores is None else self.scores[i]))
        if self.scores is not None:
            out.sort(key=lambda c: -c.score)
        return out


def _paint(value: int):
    def make(src, mask, i):
        out = src.copy()
        out[mask.astype(bool)] = (value + 40 * i) % 256
        return out
    return make


# ------------------------------------------------------------------------------ the demo path


def test_demo_path_synthetic_and_classical_with_oracle(tmp_path, capsys):
    db = tmp_path / "store.db"
    summary = _run_cli(capsys, "--refcoco", "sample", "--store", str(db), *DEMO, "--limit", "4")
    assert summary["selected"] == 4 and summary["units"] == 16  # 4 refs x (3 synthetic + 1 classical)
    assert summary["built"] == 16 and summary["failed"] == 0 and summary["skipped_done"] == 0
    data = RefCOCO.load("sample")
    gt = _gt_edits()
    accepted = 0
    with Store.open(db) as st:
        records = list(st.list_samples())
        assert len(records) == 16
        for rec in records:
            s = rec.sample
            assert rec.key == unit_key("refshapes", "unc", s.ref_id, s.edit_type, s.pipeline)
            assert s.annotator == "build"
            truth = gt[(s.ref_id, s.edit_type)]
            assert s.target == truth["target"]
            for spans, text in ((s.referring_spans, s.referring_text), (s.edit_spans, s.edit_text)):
                assert " ".join(s.prompt[a:b] for a, b in spans) == text
            src = np.asarray(data.load_image(s.image_id))
            assert np.array_equal(np.asarray(s.source_image), src)
            assert np.array_equal(s.source_mask, data.mask(s.ref_id))
            cands = st.get_candidates(s.sample_id)
            assert sum(c.chosen for c in cands) == 1
            chosen = next(c for c in cands if c.chosen)
            # the sample is the chosen candidate inside its M_e and the source outside (the invariant)
            inside = chosen.edit_mask.astype(bool)[:, :, None]
            assert np.array_equal(np.where(inside, np.asarray(chosen.image), src), np.asarray(s.edited_image))
            assert background_changes(s.source_image, s.edited_image, s.edit_mask) == 0
            region = _gt_mask(truth).astype(bool)
            if s.pipeline == "synthetic":
                assert np.array_equal(np.asarray(s.edited_image), _gt_image(truth))
                assert np.array_equal(s.edit_mask, _gt_mask(truth))
                assert s.status == "accepted"
            else:  # the oracle's verdict, recomputed here
                assert s.edit_type == "remove" and s.generation["prompt_sent"] is None
                edited = np.asarray(s.edited_image, dtype=int)
                mad = np.abs(edited - _gt_image(truth))[region].mean()
                src_mad = np.abs(src.astype(int) - _gt_image(truth))[region].mean()
                ok = mad <= ORACLE_MAX_MAD and mad <= ORACLE_MAX_RATIO * src_mad
                assert s.status == ("accepted" if ok else "candidate")
                assert s.generation["auto_accept"]["measures"]["mad"][0] == pytest.approx(mad, abs=1e-3)
                # classical inpainting leaves every pixel outside its hole (the mask grown 5 px) as it was
                outside = dilate(s.source_mask, DEFAULT_DILATE) == 0
                assert np.array_equal(edited[outside], src[outside]) and not np.array_equal(edited, src)
            if s.status == "accepted":
                accepted += 1
                assert s.reviewer == "auto:oracle"
                assert [(r.reviewer, r.decision) for r in st.get_reviews(s.sample_id)] == [("auto:oracle", "accept")]
                entries = [a for a in st.audit(s.sample_id) if a.action == "review"]
                assert entries and entries[0].user == "auto:oracle" and "auto-accepted" in json.dumps(entries[0].diff)
            else:
                assert s.reviewer == "" and not st.get_reviews(s.sample_id)
    assert accepted == summary["accepted"] >= 12


def test_rerun_repeats_nothing(tmp_path):
    db = tmp_path / "s.db"
    data = RefCOCO.load("sample")
    cfg = BuildConfig(pipelines=("synthetic", "classical_inpaint"), auto_accept="oracle", limit=2)
    with Store.open(db) as st:
        first = build(data, st, cfg)
        audit_before = len(st.audit())
    before = _snapshot(db)
    with Store.open(db) as st:
        second = build(data, st, cfg)
        assert len(st.audit()) == audit_before  # not one write
    assert first.built == 8 and second.built == 0 and second.resumed == 0
    assert second.skipped_done == 8 and second.units == 8
    assert _snapshot(db) == before


# ------------------------------------------------------------------------------ kill and resume


def _worker(db: Path, *own: str) -> subprocess.Popen:
    args = ["--refcoco", "sample", "--store", str(db), *DEMO, "--limit", "5", "--no-progress", "--json"]
    return subprocess.Popen([sys.executable, "-m", "tests.refcoco_edit.build_worker", *own, "--", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_sigkill_midway_then_resume_equals_uninterrupted_run(tmp_path, capsys):
    ref_db = tmp_path / "reference.db"
    _run_cli(capsys, "--refcoco", "sample", "--store", str(ref_db), *DEMO, "--limit", "5")
    reference = _snapshot(ref_db)
    assert len(reference) == 20

    db = tmp_path / "killed.db"
    # killed before the 3rd sample's candidates are stored: that sample is left without them
    p = _worker(db, "--die-before", "add_candidates:3")
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    snap = _snapshot(db)
    assert len(snap) == 3 and [bool(v["candidates"]) for v in snap.values()] == [True, True, False]

    # killed before the 2nd auto-acceptance (the 1st finishes the sample above): a sample is left a
    # candidate though its verdict is "accept"
    p = _worker(db, "--die-before", "add_review:2")
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    snap = _snapshot(db)
    assert len(snap) == 4 and all(v["candidates"] for v in snap.values())
    pending = [k for k, v in snap.items() if v["status"] == "candidate"]
    assert len(pending) == 1 and '"accepted": true' in snap[pending[0]]["generation"]

    # killed from outside, right after a sample row was committed (the 3rd of this run)
    p = _worker(db, "--pause-after", "add_sample:3")
    try:
        assert p.stdout.readline().strip() == "paused"
    finally:
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    snap = _snapshot(db)
    assert len(snap) == 7 and sum(not v["candidates"] for v in snap.values()) == 1
    assert all(v["status"] == "accepted" for v in snap.values() if v["candidates"])

    p = _worker(db)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0
    summary = json.loads(out)
    assert summary["resumed"] == 1 and summary["skipped_done"] == 6 and summary["built"] == 13
    assert summary["failed"] == 0
    assert _snapshot(db) == reference


# ------------------------------------------------------------------------------ failures


def _copy_sample(tmp_path: Path) -> Path:
    root = tmp_path / "refshapes_copy"
    shutil.copytree(sample_root(), root)
    return root


def test_corrupt_and_missing_images_are_recorded_and_skipped(tmp_path, capsys):
    root = _copy_sample(tmp_path)
    data = RefCOCO.load(root)
    img_dir = data.image_dir
    first_refs = data.ref_ids()[:8]
    images = sorted({data.ref(r)["image_id"] for r in first_refs})
    corrupt, missing = data.image_path(images[0]), data.image_path(images[1])
    original = corrupt.read_bytes()
    corrupt.write_bytes(original[:40] + b"\x00garbage" * 10)
    missing.unlink()
    db = tmp_path / "s.db"
    args = ["--refcoco", str(root), "--store", str(db), *DEMO, "--limit", "8"]
    summary = _run_cli(capsys, *args)
    bad_refs = {r for r in first_refs if data.ref(r)["image_id"] in images[:2]}
    expected_failed = {unit_key("refshapes", "unc", r, e, p) for r in bad_refs
                       for e, p in (("replace", "synthetic"), ("remove", "synthetic"),
                                    ("remove", "classical_inpaint"), ("attribute", "synthetic"))}
    assert bad_refs and summary["failed"] == len(expected_failed)
    assert {f["key"] for f in summary["failures"]} == expected_failed
    assert summary["built"] == summary["units"] - len(expected_failed)  # the build went on
    with Store.open(db) as st:
        failures = {f.key: f.error for f in st.failures()}
        assert set(failures) == expected_failed
        assert any(str(missing) in e and "not found" in e for e in failures.values())
        assert any(str(corrupt) in e and "not a readable image" in e for e in failures.values())
        assert st.count() == summary["built"]
    # a rerun does not retry failures unless asked; once the files are back, --retry-failed builds them
    again = _run_cli(capsys, *args)
    assert again["skipped_failed"] == len(expected_failed) and again["built"] == 0
    corrupt.write_bytes(original)
    shutil.copy(sample_root() / img_dir.relative_to(root) / missing.name, missing)
    fixed = _run_cli(capsys, *args, "--retry-failed")
    assert fixed["built"] == len(expected_failed) and fixed["failed"] == 0
    with Store.open(db) as st:
        assert st.failures() == [] and st.count() == summary["units"]


def test_ground_truth_file_names_cannot_leave_the_dataset_folder(tmp_path):
    root = _copy_sample(tmp_path)
    edits_path = root / "refshapes" / "edits.json"
    raw = json.loads(edits_path.read_text())
    ref_id = raw["edits"][0]["ref_id"]
    edit_type = raw["edits"][0]["edit_type"]
    # a real image one folder up: without the check the build would read and store it
    shutil.copy(root / "refshapes" / raw["edits"][0]["edited_file"], tmp_path / "elsewhere.png")
    raw["edits"][0]["edited_file"] = "../../elsewhere.png"
    edits_path.write_text(json.dumps(raw))
    data = RefCOCO.load(root)
    cfg = BuildConfig(pipelines=("synthetic",), edits=(edit_type,))
    with Store.open(tmp_path / "s.db") as st:
        build(data, st, cfg)
        key = unit_key("refshapes", "unc", ref_id, edit_type, "synthetic")
        errors = {f.key: f.error for f in st.failures()}
        assert "points outside" in errors[key]


def test_pipeline_error_is_recorded_and_build_goes_on(tmp_path):
    data = RefCOCO.load("sample")
    cfg = BuildConfig(pipelines=("classical_inpaint",), edits=("remove",), limit=6)
    bad_ref = data.ref_ids()[2]
    bad_mask = data.mask(bad_ref)  # the pipeline fails on this ref's object only
    fake = FakePipeline("classical_inpaint", _paint(0), fail=lambda mask: np.array_equal(mask, bad_mask))
    with Store.open(tmp_path / "s.db") as st:
        summary = build(data, st, cfg, pipeline_factory=lambda name: fake)
        key = unit_key("refshapes", "unc", bad_ref, "remove", "classical_inpaint")
        assert [(f.key, f.error) for f in st.failures()] == [(key, "RuntimeError: boom")]
        assert summary.failures == [{"key": key, "error": "RuntimeError: boom"}]
        assert summary.failed == 1 and summary.built == 5 and len(fake.calls) == 6  # refs after it were built
        assert st.count() == 5


# ------------------------------------------------------------------------------ policies and choices


def test_oracle_picks_the_candidate_closest_to_ground_truth(tmp_path):
    data = RefCOCO.load("sample")
    gt = _gt_edits()

    def make(src, mask, i):  # candidate 0 leaves the object, candidate 1 is the ground truth
        ref_id = next(r for r in data.ref_ids() if np.array_equal(data.mask(r), mask))
        return src.copy() if i == 0 else _gt_image(gt[(ref_id, "remove")]).copy()

    fake = FakePipeline("inpaint", make)
    cfg = BuildConfig(pipelines=("inpaint",), edits=("remove",), limit=2, candidates=2, auto_accept="oracle")
    with Store.open(tmp_path / "s.db") as st:
        summary = build(data, st, cfg, pipeline_factory=lambda name: fake)
        assert summary.built == summary.accepted == 2
        for rec in st.list_samples():
            s = rec.sample
            assert s.status == "accepted" and s.reviewer == "auto:oracle"
            assert s.generation["chosen_index"] == 1 and s.generation["auto_accept"]["measures"]["mad"][1] == 0
            assert np.array_equal(np.asarray(s.edited_image), _gt_image(gt[(s.ref_id, "remove")]))
            assert [c.chosen for c in st.get_candidates(s.sample_id)] == [False, True]
            assert s.generation["prompt_sent"] == "background"

    lazy = FakePipeline("inpaint", lambda src, mask, i: src.copy())  # does nothing: never accepted
    with Store.open(tmp_path / "t.db") as st:
        summary = build(data, st, cfg, pipeline_factory=lambda name: lazy)
        assert summary.accepted == 0
        assert all(r.sample.status == "candidate" and r.sample.reviewer == "" for r in st.list_samples())


@pytest.mark.parametrize("threshold, accepted", [(25.0, True), (30.5, False)])
def test_score_policy_takes_the_best_ranked_candidate(tmp_path, threshold, accepted):
    data = RefCOCO.load("sample")
    fake = FakePipeline("region_edit", _paint(200), scores=[20.0, 30.0, 10.0])
    cfg = BuildConfig(pipelines=("region_edit",), edits=("attribute",), limit=1, candidates=3,
                      auto_accept=f"score >= {threshold}", rank_clip="tiny-clip")
    with Store.open(tmp_path / "s.db") as st:
        summary = build(data, st, cfg, pipeline_factory=lambda name: fake)
        (rec,) = list(st.list_samples())
        s = rec.sample
        cands = st.get_candidates(s.sample_id)
        assert [c.score for c in cands] == [30.0, 20.0, 10.0]
        assert [c.chosen for c in cands] == [True, False, False]
        assert np.array_equal(np.asarray(s.edited_image), np.asarray(cands[0].image))
        assert s.status == ("accepted" if accepted else "candidate") and summary.accepted == int(accepted)
        assert s.reviewer == (f"auto:score>={threshold:g}" if accepted else "")
    assert fake.calls[0]["rank_by"] == "tiny-clip"


def test_targets_examples_and_enrichment_without_ground_truth(tmp_path):
    root = _copy_sample(tmp_path)
    (root / "refshapes" / "edits.json").unlink()  # a plain REFER dataset now
    data = RefCOCO.load(root)
    fakes = {n: FakePipeline(n, _paint(255)) for n in ("region_edit", "composition")}
    cfg = BuildConfig(pipelines=("region_edit", "composition"), edits=("replace", "attribute"), limit=3,
                      enrich=2, seed=7)
    with Store.open(tmp_path / "s.db") as st:
        summary = build(data, st, cfg, pipeline_factory=fakes.__getitem__)
        assert summary.built == 9  # 3 refs x (replace: 2 pipelines + attribute: region_edit)
        records = list(st.list_samples())
    names = {c["id"]: c["name"] for c in data.categories}
    sent_to = iter(c["text"] for c in fakes["region_edit"].calls)
    examples = iter(c["example_source"] for c in fakes["composition"].calls)
    for rec in records:
        s = rec.sample
        own = names[data.ref_ann(s.ref_id)["category_id"]]
        words = {w for sent in data.ref(s.ref_id)["sentences"] for w in sent["sent"].split()}
        if s.edit_type == "replace":
            assert s.target in names.values() and s.target != own
        else:
            assert s.target in ATTRIBUTE_COLOURS and s.target not in words
        if s.pipeline == "region_edit":
            sent = next(sent_to)
            assert s.generation["prompt_sent"] == sent and s.target in sent
        else:
            ann_id = int(next(examples).split()[1])
            assert ann_id != s.ann_id and names[data.ann(ann_id)["category_id"]] == s.target
        enriched = s.generation["enriched"]
        assert len(enriched) == 2 and all(e["reviewed"] is False and e["prompt"] != s.prompt for e in enriched)
        for e in enriched:
            assert " ".join(e["prompt"][a:b] for a, b in e["referring_spans"]) == e["referring_text"]
        assert s.status == "candidate" and s.reviewer == ""
    # the same seed gives the same targets; another seed (almost surely) others
    with Store.open(tmp_path / "t.db") as st:
        build(data, st, cfg, pipeline_factory=lambda n: FakePipeline(n, _paint(255)))
        assert [r.sample.target for r in st.list_samples()] == [r.sample.target for r in records]


def test_bad_requests_fail_before_any_work(tmp_path, capsys):
    root = _copy_sample(tmp_path)
    (root / "refshapes" / "edits.json").unlink()
    data = RefCOCO.load(root)
    with Store.open(tmp_path / "s.db") as st:
        for cfg, words in [
            (BuildConfig(pipelines=("synthetic",)), "ground truth"),
            (BuildConfig(pipelines=("classical_inpaint",), auto_accept="oracle"), "ground truth"),
        ]:
            with pytest.raises(InputError, match=words):
                build(data, st, cfg)
        assert st.count(failed=None) == 0
    for cfg, words in [
        (BuildConfig(pipelines=("nope",)), "unknown pipeline"),
        (BuildConfig(pipelines=("inpaint",), edits=("replace",)), "makes"),
        (BuildConfig(auto_accept="score>=20"), "--rank-clip"),
        (BuildConfig(auto_accept="sometimes"), "unknown --auto-accept"),
        (BuildConfig(pipelines=("region_edit",), edits=("add",)), "--target"),
        (BuildConfig(pipeline_models={"classical_inpaint": "x"}), "uses no model"),
        (BuildConfig(candidates=0), "--candidates"),
    ]:
        with pytest.raises(InputError, match=words):
            cfg.check()
    capsys.readouterr()
    assert cli.main(["build", "--refcoco", str(root), "--store", str(tmp_path / "c.db"),
                     "--pipelines", "synthetic", "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------ real pipelines, tiny models


def test_region_edit_on_tiny_sd15(tmp_path, capsys, tiny_cache):
    from refcoco_edit.pipelines import get_pipeline
    from refcoco_edit.text.prompts import indefinite

    loaded = {}

    def factory(name):  # load once for both builds
        if name not in loaded:
            loaded[name] = get_pipeline(name, "tiny-sd15", None, "cpu", None, progress=False)
        return loaded[name]

    data = RefCOCO.load("sample")
    cfg = BuildConfig(pipelines=("region_edit",), edits=("replace", "attribute"), limit=2, candidates=2,
                      steps=2, size=64, pipeline_models={"region_edit": "tiny-sd15"})
    snaps = []
    for name in ("a.db", "b.db"):
        with Store.open(tmp_path / name) as st:
            summary = build(data, st, cfg, pipeline_factory=factory)
            assert summary.built == 4 and summary.failed == 0
        snaps.append(_snapshot(tmp_path / name))
    assert snaps[0] == snaps[1]  # seeded: a rebuilt (resumed) unit has the same pixels
    gt = _gt_edits()
    with Store.open(tmp_path / "a.db") as st:
        for rec in st.list_samples():
            s = rec.sample
            g = s.generation
            assert g["model"] == "tiny-sd15" and g["steps"] == 2 and g["size"] == 64
            assert g["work_size"] == [64, 48] and len(g["seeds"]) == 2 and g["seeds"][1] == g["seeds"][0] + 1
            assert s.target == gt[(s.ref_id, s.edit_type)]["target"]
            if s.edit_type == "replace":
                assert g["prompt_sent"] == indefinite(s.target)
            else:
                assert g["prompt_sent"].startswith(indefinite(s.target).split()[0]) and s.target in g["prompt_sent"]
            cands = st.get_candidates(s.sample_id)
            assert len(cands) == 2 and cands[0].chosen and s.edited_image.size == s.source_image.size
            # the chosen candidate inside its M_e; outside it the source, exactly (the invariant)
            inside = cands[0].edit_mask.astype(bool)[:, :, None]
            assert np.array_equal(np.where(inside, np.asarray(cands[0].image), np.asarray(s.source_image)),
                                  np.asarray(s.edited_image))
            assert background_changes(s.source_image, s.edited_image, s.edit_mask) == 0
    # and through the CLI with --pipeline-model
    summary = _run_cli(capsys, "--refcoco", "sample", "--store", str(tmp_path / "cli.db"), "--pipelines", "region_edit",
                       "--pipeline-model", "region_edit=tiny-sd15", "--steps", "2", "--size", "64", "--limit", "1",
                       "--edits", "replace")
    assert summary["built"] == 1


def test_beside_region_is_the_box_moved_to_the_roomier_side():
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 3:7] = 1  # more room on the right
    out = beside_region(mask)
    assert out.sum() == 12 and out[2:5, 7:11].all()
    flipped = beside_region(mask[:, ::-1].copy())
    assert np.array_equal(flipped, out[:, ::-1])


def test_build_pipelines_are_the_model_pipelines_and_synthetic():
    from refcoco_edit.curation.build import BUILD_PIPELINES
    from refcoco_edit.pipelines import pipeline_names

    assert BUILD_PIPELINES.names() == [*pipeline_names(), "synthetic"]
    synthetic = BUILD_PIPELINES.load("synthetic")
    assert synthetic.needs_ground_truth and not synthetic.needs_weights and not synthetic.needs_mask
    assert synthetic.edit_types == ("replace", "remove", "attribute")
    assert [n for n in BUILD_PIPELINES if BUILD_PIPELINES.load(n).needs_ground_truth] == ["synthetic"]
