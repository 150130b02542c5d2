"""The runner and the `run` / `score` / `list` commands: resume after a kill, refusal to mix
configurations, sharding, unavailable metrics, submission validation, light start-up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.run.dataset import ensure_sample_dataset, open_selection
from benchmark.run.folder import output_name
from benchmark.run.generation import sample_seed
from benchmark.run.runner import RunConfig, run_benchmark
from refcoco_edit.errors import InputError

REPO = Path(__file__).resolve().parents[2]
STAMP = "tests.benchmark.stub_methods:StampMethod"
METRICS = "l2_bg,localisation"


def _config(dataset: Path, out: Path, **kw) -> RunConfig:
    base = dict(method=STAMP, dataset=str(dataset), out=out, metrics=METRICS, progress=False)
    base.update(kw)
    return RunConfig(**base)


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("output", "seconds")} for r in rows]


def _calls(log: Path) -> list[tuple[str, str]]:
    if not log.is_file():
        return []
    return [tuple(line.split()[:2]) for line in log.read_text().splitlines() if line.strip()]


@pytest.fixture
def no_model_config(monkeypatch, tmp_path):
    monkeypatch.setenv("REFCOCO_EDIT_CONFIG", str(tmp_path / "absent.yaml"))
    for var in [v for v in os.environ if v.startswith("REFCOCO_EDIT_MODEL_")]:
        monkeypatch.delenv(var)


# ---------------------------------------------------------------------------------------------
# seeds and names


def test_sample_seeds_depend_on_the_run_seed_and_the_id_only():
    assert sample_seed(0, "a") == sample_seed(0, "a")
    assert len({sample_seed(0, "a"), sample_seed(1, "a"), sample_seed(0, "b")}) == 3
    assert all(0 <= sample_seed(s, "x") < 2**31 for s in range(20))


def test_output_names_are_sample_ids_or_their_percent_encoding():
    assert output_name("k5957977fab900d944483524") == "k5957977fab900d944483524"
    assert output_name("coco/12 3") == "coco%2F12%203"


def test_the_dataset_fingerprint_follows_the_content_not_the_copy(bench_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bench_dataset, copy)
    full = open_selection(str(bench_dataset)).fingerprint()
    assert open_selection(str(copy)).fingerprint() == full
    assert open_selection(str(bench_dataset), limit=3).fingerprint() != full


def test_dataset_sample_is_built_once_into_the_cache_and_reused(bench_dataset, tmp_path, monkeypatch):
    import refcoco_edit.curation.build

    monkeypatch.setenv("REFCOCO_EDIT_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "datasets" / "refshapes-edit-v1"
    shutil.copytree(bench_dataset, target)

    def no_build(*a, **k):
        raise AssertionError("the cached dataset should have been reused")

    monkeypatch.setattr(refcoco_edit.curation.build, "build", no_build)
    assert ensure_sample_dataset() == target
    selection = open_selection("sample", limit=2)
    assert selection.source == str(target) and len(selection) == 2


# ---------------------------------------------------------------------------------------------
# resume


def test_a_killed_run_resumes_without_redoing_finished_samples(bench_dataset, tmp_path):
    out, log = tmp_path / "run", tmp_path / "calls.log"
    cmd = [sys.executable, "-m", "benchmark.cli", "run", "--method", STAMP, "--dataset", str(bench_dataset),
           "--out", str(out), "--metrics", METRICS, "--method-option", "delay=0.4", "--method-option", f"log={log}",
           "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(list((out / "outputs").glob("*.png"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run made no output in time"
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no clean-up runs
        proc.wait()
    cached = {p.stem: p.stat().st_mtime_ns for p in (out / "outputs").glob("*.png")}
    assert 2 <= len(cached) < 6
    assert not (out / "results.json").exists()
    before = len(_calls(log))

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{6 - len(cached)} generated, {len(cached)} reused" in done.stdout
    rerun_ids = [sid for _, sid in _calls(log)[before:]]
    all_ids = set(open_selection(str(bench_dataset)).ids)
    assert sorted(rerun_ids) == sorted(all_ids - set(cached))  # each missing sample once, no finished one
    for stem, mtime in cached.items():
        assert (out / "outputs" / f"{stem}.png").stat().st_mtime_ns == mtime

    straight = run_benchmark(_config(bench_dataset, tmp_path / "straight"))
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["metrics"] == straight.results["metrics"]
    assert _comparable(_rows(out)) == _comparable(_rows(tmp_path / "straight"))
    for sid in all_ids:
        straight = tmp_path / "straight" / "outputs" / f"{sid}.png"
        assert (out / "outputs" / f"{sid}.png").read_bytes() == straight.read_bytes()


def test_missing_or_broken_outputs_are_regenerated_and_nothing_else(bench_dataset, tmp_path):
    log = tmp_path / "calls.log"
    out = tmp_path / "run"
    first = run_benchmark(_config(bench_dataset, out, method_options={"log": str(log)}))
    assert first.generated == 6 and len(_calls(log)) == 6
    ids = open_selection(str(bench_dataset)).ids
    (out / "outputs" / f"{ids[0]}.png").unlink()
    broken = out / "outputs" / f"{ids[3]}.png"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated, as by a full disk
    again = run_benchmark(_config(bench_dataset, out, method_options={"log": str(log)}))
    assert (again.generated, again.cached) == (2, 4)
    assert sorted(sid for _, sid in _calls(log)[6:]) == sorted([ids[0], ids[3]])
    assert again.results["metrics"] == first.results["metrics"]


def test_a_folder_of_another_configuration_is_refused_unless_overwritten(bench_dataset, tmp_path):
    out = tmp_path / "run"
    run_benchmark(_config(bench_dataset, out, limit=2))
    with pytest.raises(InputError, match="outputs of another run.*seed"):
        run_benchmark(_config(bench_dataset, out, limit=2, seed=1))
    with pytest.raises(InputError, match="another run"):
        run_benchmark(_config(bench_dataset, out, limit=2, method_options={"delay": 0.001}))
    redone = run_benchmark(_config(bench_dataset, out, limit=2, seed=1, overwrite=True))
    assert (redone.generated, redone.cached) == (2, 0)
    # a larger limit on the same configuration reuses what is there
    more = run_benchmark(_config(bench_dataset, out, limit=4, seed=1))
    assert (more.generated, more.cached) == (2, 2)


def test_a_folder_made_before_an_option_existed_resumes_with_that_option_at_its_default(bench_dataset, tmp_path):
    out = tmp_path / "run"
    run_benchmark(_config(bench_dataset, out, limit=2))
    record = json.loads((out / "run.json").read_text())
    del record["method"]["options"]["delay"]  # as written by a version of the method without `delay`
    (out / "run.json").write_text(json.dumps(record))
    again = run_benchmark(_config(bench_dataset, out, limit=2))
    assert (again.generated, again.cached) == (0, 2)
    assert json.loads((out / "run.json").read_text())["method"]["options"]["delay"] == 0.0  # recorded now
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="another run"):  # not at its default: other outputs
        run_benchmark(_config(bench_dataset, out, limit=2, method_options={"delay": 0.001}))


def test_temporary_files_of_a_killed_write_are_removed_on_resume(bench_dataset, tmp_path):
    out = tmp_path / "run"
    run_benchmark(_config(bench_dataset, out, limit=2))
    ids = open_selection(str(bench_dataset)).ids
    outputs = out / "outputs"
    (outputs / f"{ids[2]}.png").unlink(missing_ok=True)
    stale = outputs / f".{ids[2]}.png.4242.tmp"  # what SIGKILL during save_png_atomic leaves
    stale.write_bytes(b"\x89PNG half")
    foreign = outputs / f".{ids[5]}.png.4243.tmp"  # another share's sample: not ours to touch
    foreign.write_bytes(b"\x89PNG half")
    again = run_benchmark(_config(bench_dataset, out, limit=3))
    assert (again.generated, again.cached) == (1, 2)
    assert not stale.exists()
    assert foreign.exists()
    assert not [p for p in outputs.iterdir() if p.name.endswith(".tmp") and p != foreign]


def test_a_share_run_by_hand_cannot_overwrite_another_configuration(bench_dataset, tmp_path):
    out = tmp_path / "run"
    run_benchmark(_config(bench_dataset, out, limit=4))
    before = {p.name: p.read_bytes() for p in (out / "outputs").glob("*.png")}
    # share 1 of 2 with --overwrite must not reuse the seed-0 outputs as seed-1 ones, nor clear them
    with pytest.raises(InputError, match="share 0"):
        run_benchmark(_config(bench_dataset, out, limit=4, seed=1, overwrite=True, shard=(1, 2)))
    assert {p.name: p.read_bytes() for p in (out / "outputs").glob("*.png")} == before
    first = run_benchmark(_config(bench_dataset, out, limit=4, seed=1, overwrite=True, shard=(0, 2)))
    assert (first.generated, first.cached) == (2, 0)
    second = run_benchmark(_config(bench_dataset, out, limit=4, seed=1, overwrite=True, shard=(1, 2)))
    assert (second.generated, second.cached) == (2, 0) and second.results is not None
    straight = run_benchmark(_config(bench_dataset, tmp_path / "straight", limit=4, seed=1))
    assert second.results["metrics"] == straight.results["metrics"]


# ---------------------------------------------------------------------------------------------
# sharding


def test_shards_run_by_hand_merge_into_the_single_process_results(bench_dataset, tmp_path):
    single = run_benchmark(_config(bench_dataset, tmp_path / "single"))
    out = tmp_path / "sharded"
    second = run_benchmark(_config(bench_dataset, out, shard=(1, 2)))
    assert second.results is None and second.generated == 3  # waits for the other shard
    assert not (out / "results.json").exists()
    first = run_benchmark(_config(bench_dataset, out, shard=(0, 2)))
    assert first.generated == 3 and first.results is not None
    assert first.results["metrics"] == single.results["metrics"]
    assert first.results["config"]["processes"] == 2
    assert _comparable(_rows(out)) == _comparable(_rows(tmp_path / "single"))
    with pytest.raises(InputError, match="0 <= I < N"):
        run_benchmark(_config(bench_dataset, out, shard=(2, 2)))


@pytest.mark.slow
def test_torchrun_two_processes_share_the_samples(bench_dataset, tmp_path):
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "benchmark.cli", "run", "--method", STAMP,
                           "--dataset", str(bench_dataset), "--out", str(out), "--metrics", METRICS, "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    shards = sorted(p.name for p in (out / "generation").iterdir())
    assert shards == ["shard-000-of-002.jsonl", "shard-001-of-002.jsonl"]
    single = run_benchmark(_config(bench_dataset, tmp_path / "single"))
    assert json.loads((out / "results.json").read_text())["metrics"] == single.results["metrics"]


# ---------------------------------------------------------------------------------------------
# results and metrics


def test_results_record_the_run(bench_dataset, tmp_path):
    summary = run_benchmark(_config(bench_dataset, tmp_path / "run", seed=7, label="stamped"))
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r == json.loads(json.dumps(summary.results))
    assert r["schema"] == "rie-bench/results/v1" and r["method"]["label"] == "stamped"
    assert r["method"]["config"]["options"] == {"delay": 0.0, "log": ""}
    assert r["seeds"]["run_seed"] == 7 and r["config"]["seed"] == 7
    assert r["environment"]["packages"]["numpy"] == np.__version__
    assert "commit" in (r["environment"]["git"] or {"commit": None})
    assert r["dataset"]["samples"] == 6 and len(r["dataset"]["fingerprint"]) == 64
    assert set(r["tables"]["by_edit_type"]) == {"replace", "remove", "attribute"}
    assert r["tables"]["by_edit_type"]["remove"]["l2_bg"] == r["metrics"]["l2_bg"]["by_edit_type"]["remove"]
    rows = _rows(tmp_path / "run")
    assert [row["seed"] for row in rows] == [sample_seed(7, row["sample_id"]) for row in rows]
    # the means are the means of the per-sample values written beside them
    assert r["metrics"]["loc_iou"]["value"] == pytest.approx(np.mean([row["loc_iou"] for row in rows]))
    lo, hi = r["metrics"]["loc_iou"]["ci"]
    assert lo <= r["metrics"]["loc_iou"]["value"] <= hi


def test_metrics_without_weights_are_reported_unavailable_with_the_reason(bench_dataset, tmp_path, no_model_config,
                                                                        capsys):
    from benchmark.cli import main

    rc = main(["run", "--method", "identity", "--dataset", str(bench_dataset), "--out", str(tmp_path / "run"),
               "--metrics", "aesthetic,l2_bg", "--limit", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["metrics"]["aesthetic"]["available"] is False and r["metrics"]["aesthetic"]["value"] is None
    assert "REFCOCO_EDIT_MODEL_AESTHETIC" in r["metrics"]["aesthetic"]["reason"]
    assert r["metrics"]["l2_bg"]["value"] == 0.0
    assert "aesthetic ↑" in printed and "n/a" in printed and "l2_bg ↓" in printed
    assert all(row["aesthetic"] is None for row in _rows(tmp_path / "run"))


def test_run_cli_scores_every_metric_with_the_tiny_models(bench_dataset, tmp_path, tiny_cache, one_thread, capsys):
    from benchmark.cli import main

    rc = main(["run", "--method", "reference", "--dataset", str(bench_dataset), "--out", str(tmp_path / "run"),
               "--limit", "3", "--clip-model", "tiny-clip", "--aesthetic-model", "tiny-aesthetic", "--no-progress"])
    assert rc == 0
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = ["aesthetic", "l2_bg", "clip_sim_fg", "clip_sim_fg_ref", "psnr_bg", "ssim_bg", "clip_t",
                "loc_precision", "loc_recall", "loc_iou", "fg_agreement", "psnr_fg"]
    assert list(r["metrics"]) == expected
    assert [k for k, v in r["metrics"].items() if not v["available"]] == ["clip_t"]  # no target captions
    assert r["metrics"]["l2_bg"]["higher_is_better"] is False and r["metrics"]["loc_iou"]["value"] == 1.0
    assert r["metrics"]["fg_agreement"]["value"] == 1.0  # the reference method returns I_e itself
    assert "3 generated" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# score


def test_score_gives_the_results_of_the_run_that_made_the_outputs(bench_dataset, tmp_path, capsys):
    from benchmark.cli import main

    run = run_benchmark(_config(bench_dataset, tmp_path / "run"))
    sub = tmp_path / "submission"
    sub.mkdir()
    for png in (tmp_path / "run" / "outputs").glob("*.png"):
        shutil.copy(png, sub / png.name)
    rc = main(["score", "--pred", str(sub), "--dataset", str(bench_dataset), "--metrics", METRICS, "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    scored = json.loads((sub / "results.json").read_text())
    assert scored["kind"] == "score" and scored["method"]["label"] == "submission"
    assert scored["metrics"] == run.results["metrics"]
    assert scored["dataset"]["fingerprint"] == run.results["dataset"]["fingerprint"]
    assert len(_rows(sub)) == 6
    # a run folder is accepted as is (its outputs/ is found); its own results.json is not overwritten
    rc = main(["score", "--pred", str(tmp_path / "run"), "--dataset", str(bench_dataset), "--metrics", METRICS,
               "--no-progress"])
    assert rc == 2 and "pass --out" in capsys.readouterr().err
    rc = main(["score", "--pred", str(tmp_path / "run"), "--dataset", str(bench_dataset), "--metrics", METRICS,
               "--out", str(tmp_path / "rescored"), "--no-progress"])
    assert rc == 0
    assert json.loads((tmp_path / "rescored" / "results.json").read_text())["metrics"] == run.results["metrics"]


def test_score_refuses_a_bad_submission_naming_every_problem(bench_dataset, tmp_path, capsys):
    from benchmark.cli import main

    run_benchmark(_config(bench_dataset, tmp_path / "run"))
    ids = open_selection(str(bench_dataset)).ids
    sub = tmp_path / "submission"
    shutil.copytree(tmp_path / "run" / "outputs", sub)
    (sub / f"{ids[0]}.png").unlink()  # missing
    with Image.open(sub / f"{ids[1]}.png") as im:
        im.convert("RGBA").save(sub / f"{ids[1]}.png")  # alpha
        w, h = im.size
        im.resize((64, 64)).save(sub / f"{ids[2]}.png")  # wrong aspect ratio
        im.resize((w // 2, h // 2)).save(sub / f"{ids[4]}.png")  # same aspect: fine, resized at scoring
    data = (sub / f"{ids[3]}.png").read_bytes()
    (sub / f"{ids[3]}.png").write_bytes(data[: len(data) // 2])  # truncated
    Image.new("RGB", (8, 8)).save(sub / "not-a-sample.png")
    rc = main(["score", "--pred", str(sub), "--dataset", str(bench_dataset), "--metrics", METRICS, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "4 problem(s)" in err and "2 of 6 outputs are fine" in err
    assert f"no output for 1 sample(s): {ids[0]}" in err
    assert f"{ids[1]}.png: has an alpha channel (mode RGBA)" in err
    assert f"{ids[2]}.png: is 64x64 but the source is {w}x{h}" in err
    assert f"{ids[3]}.png: cannot be read" in err
    assert ids[4] not in err and "not-a-sample" not in err
    assert not (sub / "results.json").exists()


def test_validation_accepts_resizable_outputs_and_warns_about_extras(tmp_path):
    from benchmark.run.submission import validate_submission

    Image.new("RGB", (128, 96)).save(tmp_path / "a.png")
    Image.new("RGB", (120, 96)).save(tmp_path / "b.jpg")  # 6% off the aspect ratio: still resizable
    Image.new("RGB", (8, 8)).save(tmp_path / "extra.png")
    report = validate_submission(tmp_path, {"a": (256, 192), "b": (256, 192)})
    assert report.ok and sorted(report.resized) == ["a", "b"] and set(report.files) == {"a", "b"}
    assert any("extra" in w for w in report.warnings) and any("lossy" in w for w in report.warnings)
    Image.new("RGB", (256, 192)).save(tmp_path / "b.png")
    report = validate_submission(tmp_path, {"a": (256, 192), "b": (256, 192)})
    assert not report.ok and "several outputs for 1 sample(s): b (b.jpg, b.png)" in report.problems[0]


# ---------------------------------------------------------------------------------------------
# start-up


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["list"], ["list", "--json"]])
def test_help_and_list_do_not_import_torch(argv):
    code = (f"import sys\nfrom benchmark.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'datasets') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def test_list_names_methods_metrics_and_their_weights(no_model_config, capsys):
    from benchmark.cli import main

    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    methods = {m["name"]: m for m in data["methods"]}
    assert list(methods) == ["identity", "reference", "blended", "ip2p", "magicbrush", "instructdiffusion",
                             "seg_inpaint", "referdiffusion"]
    assert methods["identity"]["available"] and methods["identity"]["weights"] is None
    idiff = methods["instructdiffusion"]
    assert not idiff["available"] and "instructdiffusion" in idiff["reason"]
    assert "timbrooks/instruct-pix2pix" in methods["ip2p"]["weights"]
    metrics = {m["name"]: m for m in data["metrics"]}
    assert metrics["l2_bg"]["available"] and metrics["l2_bg"]["higher_is_better"] is False
    assert not metrics["aesthetic"]["available"]
    assert metrics["localisation"]["outputs"] == ["loc_precision", "loc_recall", "loc_iou"]
