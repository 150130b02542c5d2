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


def _independent_round_trip(vae_folder: Path, image, size: int):
    """I_e through the VAE the way diffusers' image processor does it: LANCZOS to the working size,
    [-1, 1], posterior mode, decode, round to bytes, LANCZOS back."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    vae = AutoencoderKL.from_pretrained(str(vae_folder)).float().eval()
    w, h = image.size
    scale = size / max(w, h)
    work = (max(8, round(w * scale / 8) * 8), max(8, round(h * scale / 8) * 8))
    proc = VaeImageProcessor(vae_scale_factor=8)
    with torch.no_grad():
        x = proc.preprocess(image.resize(work, Image.Resampling.LANCZOS))
        out = vae.decode(vae.encode(x).latent_dist.mode()).sample
    return np.asarray(proc.postprocess(out, output_type="pil")[0].resize((w, h), Image.Resampling.LANCZOS))


def test_reference_through_the_shipped_vae_is_the_latent_editors_ceiling(bench_dataset, one_thread):
    from types import SimpleNamespace

    import numpy as np

    from benchmark.methods import create_method
    from benchmark.run.dataset import open_selection
    from refcoco_edit.errors import ModelNotAvailableError

    row = open_selection(str(bench_dataset), limit=1).dataset[0]
    sample = SimpleNamespace(edited_image=row["edited_image"])
    exact = np.asarray(sample.edited_image.convert("RGB"))
    method = create_method("reference", size=64, vae="refshapes-vae")
    method.ensure_ready()
    out = np.asarray(method.edit(sample, seed=0))
    assert out.shape == exact.shape and not np.array_equal(out, exact)  # the round trip loses detail
    ref = _independent_round_trip(Path(resolve("refshapes-vae").source), sample.edited_image.convert("RGB"), 64)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 2
    via_pipeline = create_method("reference", size=64, vae=resolve("refshapes-referdiffusion").source)
    via_pipeline.ensure_ready()
    assert np.array_equal(np.asarray(via_pipeline.edit(sample, seed=0)), out)  # its vae/ is the same VAE
    assert np.array_equal(np.asarray(create_method("reference").edit(sample, seed=0)), exact)
    with pytest.raises(ModelNotAvailableError, match="vae='/no/such/vae'"):
        create_method("reference", vae="/no/such/vae").ensure_ready()
