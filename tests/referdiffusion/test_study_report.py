"""The study's report (table, grid, curves) from rie-bench run folders, and the resumable study command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from referdiffusion.study import report
from referdiffusion.study import run as study

IDS = ["s-1", "s-2", "s-3"]


def _run_folder(root, key, value, colour, mask_ious=None):
    folder = root / key
    (folder / "outputs").mkdir(parents=True)
    metric = {"value": value, "ci": [value - 0.01, value + 0.01], "n": 3, "available": True,
              "by_edit_type": {"replace": {"value": value}, "remove": {"value": value / 2}}}
    names = ("fg_agreement", "psnr_fg", "l2_bg", "psnr_bg", "loc_iou")
    (folder / "results.json").write_text(json.dumps({"metrics": {n: metric for n in names}}))
    rows = []
    for i, sid in enumerate(IDS):
        Image.new("RGB", (8, 6), colour).save(folder / "outputs" / f"{sid}.png")
        gen = {} if mask_ious is None else {"mask_iou": mask_ious[i]}
        rows.append({"sample_id": sid, "prompt": f"edit {sid}", "generation": gen})
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def evaluated(tmp_path):
    _run_folder(tmp_path, "identity", 0.06, (10, 10, 10))
    _run_folder(tmp_path, "reference", 1.0, (250, 0, 0))
    _run_folder(tmp_path, "reference_vae", 0.9, (250, 250, 0))
    _run_folder(tmp_path, "finetune", 0.2, (0, 250, 0))
    _run_folder(tmp_path, "rem", 0.3, (0, 0, 250), mask_ious=[0.5, 0.7, None])
    return tmp_path


def test_table_has_the_paper_layout_and_the_rem_mask_iou(evaluated):
    table = report.markdown_table(report.results(evaluated)).splitlines()
    assert table[0].startswith("| method | REM | RCL | stage 1 | fg_agreement")
    labels = [line.split("|")[1].strip() for line in table[2:]]
    assert labels == [report.entry(k).label for k in ("identity", "finetune", "rem", "reference", "reference_vae")]
    rem = table[4].split("|")
    assert rem[2].strip() == "yes" and rem[5].strip() == "0.300 [0.290, 0.310]"
    assert rem[10].strip().startswith("0.600 [")  # the mean of the REM's per-sample IoUs, None left out
    assert table[3].split("|")[10].strip() == ""  # the fine-tune row has no REM
    assert "| 0.300 | 0.150 | nan |" in report.by_type_table(report.results(evaluated))
    assert report.report_text(evaluated).endswith(report.by_type_table(report.results(evaluated)))


def test_seeds_table_gives_each_seed_its_value_their_mean_and_spread(evaluated, tmp_path):
    other = tmp_path / "seed1"
    _run_folder(other, "finetune", 0.3, (0, 250, 0))
    _run_folder(other, "rem", 0.1, (0, 0, 250), mask_ious=[0.1, 0.3, 0.2])
    lines = report.seeds_table([evaluated, other]).splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == [report.entry(k).label for k in ("finetune", "rem")]
    finetune, rem = (line.split("|") for line in lines[2:])
    assert finetune[2].strip() == "2" and finetune[3].strip() == "0.250 ± 0.071 (0.200, 0.300)"
    assert finetune[7].strip() == ""  # no REM, no mask IoU
    assert rem[3].strip() == "0.200 ± 0.141 (0.300, 0.100)"  # in the order the roots were given
    assert rem[7].strip() == "0.400 ± 0.283 (0.600, 0.200)"
    assert "n/a" not in report.seeds_table([evaluated])  # one seed: its value, no spread
    assert "0.200 ± nan (0.200)" in report.seeds_table([evaluated])


def test_grid_puts_each_output_in_its_column(evaluated, tmp_path):
    path = report.grid(evaluated, tmp_path / "docs" / "grid.png", count=2)
    img = np.asarray(Image.open(path))
    columns = ["identity", "reference", "reference_vae", "finetune", "rem"]  # then the trained rows
    assert img.shape == (14 + 2 * 10 + 4, len(columns) * 12 + 4, 3)
    expected = {"identity": (10, 10, 10), "reference": (250, 0, 0), "reference_vae": (250, 250, 0),
                "finetune": (0, 250, 0), "rem": (0, 0, 250)}
    for j, key in enumerate(columns):
        for i in range(2):
            y, x = 14 + 4 + i * 10 + 3, 4 + j * 12 + 4
            assert tuple(img[y, x]) == expected[key]
    assert path.with_suffix(".txt").read_text().splitlines() == ["s-1: edit s-1", "s-2: edit s-2"]


def test_curves_plot_draws_one_line_per_row(tmp_path):
    curves = {"a": [(s, 1.0 / (1 + s)) for s in range(0, 200, 10)], "b": [(s, 0.5) for s in range(0, 200, 10)]}
    img = np.asarray(Image.open(report.curves_plot(curves, tmp_path / "c.png")))
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours
    with pytest.raises(Exception, match="no loss curve"):
        report.curves_plot({"a": []}, tmp_path / "d.png")


def test_study_command_skips_finished_stages_and_stops_at_until(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(study, "run_stage", lambda p, stage, **kw: ran.append(stage))
    p = study.Paths(tmp_path)
    (p.data / "refshapes").mkdir(parents=True)
    (p.data / "refshapes" / "instances.json").write_text("{}")
    assert study.main(["--root", str(tmp_path), "--until", "inputs"]) == 0
    assert ran == ["vae", "inputs"]
    out = capsys.readouterr().out
    assert "[study] 1/7 data: done" in out and "[study] 2/7 vae: running" in out and "rows" not in out
    assert study.main(["--root", str(tmp_path), "status"]) == 0
    assert "[study] 4/7 rows: to do" in capsys.readouterr().out
    with pytest.raises(Exception, match="unknown stage"):
        study.done(p, "nope")


def test_another_seed_reuses_the_inputs_and_evaluates_only_its_rows(tmp_path, monkeypatch, capsys):
    from referdiffusion.study import rows

    first = study.Paths(tmp_path / "seed0")
    (first.data / "refshapes").mkdir(parents=True)
    (first.data / "refshapes" / "instances.json").write_text("{}")
    first.vae.mkdir(parents=True)
    (first.vae / "config.json").write_text("{}")
    for rel in (rows.BASE, rows.EDITS, rows.SYNTH):
        (first.rows / rel).mkdir(parents=True)
    prepared = {}

    def prepare(root, data, **kw):
        prepared.update(kw, root=root, data=data)
        rows.link_folder(kw["edits"], root / rows.EDITS)
        rows.link_folder(kw["synth"], root / rows.SYNTH)
        (root / rows.BASE).mkdir(parents=True)
        (root / rows.BASE / "study_base.json").write_text(json.dumps({"seed": kw["seed"]}))

    monkeypatch.setattr(rows, "prepare", prepare)
    second = tmp_path / "seed1"
    with pytest.raises(Exception, match="no finished data"):
        study.main(["--root", str(second), "--seed", "1", "--reuse", str(tmp_path / "nothing")])
    assert study.main(["--root", str(second), "--seed", "1", "--reuse", str(first.root), "--until", "inputs"]) == 0
    p = study.Paths(second, 1)
    assert p.data.resolve() == first.data.resolve() and (p.vae / "config.json").is_file()
    assert prepared["seed"] == 1 and prepared["edits"] == first.rows / rows.EDITS
    assert rows.base_seed(p.rows) == 1 and rows.base_seed(first.rows) == 0  # no note: a root from before seeds
    # the root keeps its seed: status needs no --seed, and another seed is refused
    capsys.readouterr()
    assert study.main(["--root", str(second), "status"]) == 0
    assert "3/7 inputs: done" in capsys.readouterr().out
    with pytest.raises(Exception, match="drawn with seed 1, not 2"):
        study.run_stage(study.Paths(second, 2), "rows")
    # the reference methods do not depend on the seed: another seed evaluates the trained rows only
    assert p.entries() == [e.key for e in report.ENTRIES if e.trained]
    assert study.Paths(second).entries() == [e.key for e in report.ENTRIES]
    for key in p.entries():
        (p.eval / key).mkdir(parents=True)
        (p.eval / key / "results.json").write_text("{}")
    assert study.done(p, "evaluate") and not study.done(study.Paths(second), "evaluate")


def test_a_seeded_root_trains_its_rows_with_that_seed(tmp_path, monkeypatch):
    from referdiffusion import train as trainer
    from referdiffusion.study import rows

    (tmp_path / rows.BASE).mkdir(parents=True)
    (tmp_path / rows.BASE / "study_base.json").write_text(json.dumps({"seed": 2}))
    seen = []
    monkeypatch.setattr(trainer, "train", lambda cfg, **kw: seen.append(cfg.seed))
    rows.run_row("finetune", tmp_path)
    rows.run_row("finetune", tmp_path, extra=["seed=5"])  # an explicit override still wins
    assert seen == [2, 5]
