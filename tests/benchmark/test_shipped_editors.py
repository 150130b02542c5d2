"""The editors trained here on RefShapes ship in the package and run as the README says, with no training,
no size flag and no download: the fine-tune row as `ip2p`, the full row (and the ablation rows) as
`referdiffusion`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from refcoco_edit.models.resolver import resolve  # noqa: E402
from referdiffusion.study.package import LINKS, PACKAGED  # noqa: E402
from referdiffusion.train.manifest import trained_size  # noqa: E402


@pytest.mark.parametrize("name", sorted(PACKAGED.values()))
def test_packaged_folders_are_complete_and_trained_at_64(name):
    folder = resolve(name)
    assert folder.origin == "packaged"
    root = Path(folder.source)
    assert all((root / link).resolve().is_dir() for link in LINKS)  # the shared parts, inside the package
    assert trained_size(root) == 64
    index = json.loads((root / "model_index.json").read_text())
    expected = "StableDiffusionInstructPix2PixPipeline" if name == "refshapes-ip2p" else "ReferDiffusionPipeline"
    assert index["_class_name"] == expected


@pytest.mark.parametrize("method,model", [("ip2p", "refshapes-ip2p"), ("referdiffusion", "refshapes-referdiffusion")])
def test_readme_commands_run_the_shipped_editors(bench_dataset, tmp_path, one_thread, method, model):
    from benchmark.cli import main

    out = tmp_path / method
    rc = main(["run", "--method", method, "--method-model", model, "--dataset", str(bench_dataset), "--out", str(out),
               "--limit", "2", "--steps", "4", "--metrics", "l2_bg,fg_agreement", "--no-progress"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["size"] is None and results["method"]["config"]["size"] == 64  # from the checkpoint
    assert results["metrics"]["fg_agreement"]["n"] == 2
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    if method == "referdiffusion":
        assert all(0 <= r["generation"]["mask_iou"] <= 1 for r in rows)
    else:  # trained on the bare prompt, so the ip2p method sends it without the instruction suffix
        assert results["method"]["config"]["options"]["suffix"] == ""
        assert all(r["generation"]["prompt_sent"] == r["prompt"] for r in rows)


def test_the_instruction_suffix_stays_for_models_not_trained_here_and_when_asked_for():
    from benchmark.methods import INSTRUCTION_SUFFIX, create_method

    assert create_method("ip2p", model="refshapes-ip2p").options["suffix"] == ""
    assert create_method("ip2p", model="refshapes-ip2p", suffix=" now").options["suffix"] == " now"
    assert create_method("ip2p", model="tiny-ip2p").options["suffix"] == INSTRUCTION_SUFFIX
