"""Packaging the study's rows: fp16 folders that standard loaders open, frozen parts stored once.

The fine-tune row becomes an InstructPix2Pix folder; it must edit exactly as the ReferDiffusion checkpoint
it came from (whose REM, never trained, has a zero gate), which is the reference here.
"""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from refcoco_edit.errors import InputError  # noqa: E402
from referdiffusion.study import micro  # noqa: E402
from referdiffusion.study import package as pk  # noqa: E402
from referdiffusion.study.checkpoint import SHIPPED_VAE, write_checkpoint  # noqa: E402
from referdiffusion.train.manifest import MANIFEST_SCHEMA, trained_size  # noqa: E402
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


def _final(folder, seed=0):
    """A row's final/ folder: the study's starting checkpoint (shipped VAE, small UNet) and a manifest."""
    write_checkpoint(folder, seed=seed, unet_overrides=micro.MICRO_UNET, rem_overrides=micro.MICRO_REM)
    manifest = {"schema": MANIFEST_SCHEMA, "preprocess": {"resize": "aspect", "size": 64}, "stages": [],
                "pictures": {}}
    (folder / pk.MANIFEST).write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("package")
    models = root / "models"
    shutil.copytree(SHIPPED_VAE, models / pk.VAE)
    finals = {"finetune": _final(root / "finetune"), "rem": _final(root / "rem", seed=1)}
    notes = {row: pk.package_row(row, final, models) for row, final in finals.items()}
    return models, finals, notes


def test_rows_share_the_frozen_parts_through_relative_links(packaged):
    models, _, notes = packaged
    assert notes["finetune"]["text"] == "written" and notes["rem"]["text"] == "kept"
    assert (models / pk.TEXT / "README.md").read_text() == pk.TEXT_CARD
    for row in ("finetune", "rem"):
        folder = models / pk.PACKAGED[row]
        for name, target in pk.LINKS.items():
            link = folder / name
            assert link.is_symlink() and str(link.readlink()) == target and link.resolve().is_dir()
        assert trained_size(folder) == 64
        assert f"# {pk.PACKAGED[row]}" in (folder / "README.md").read_text()  # its model card
        for config in [folder / "model_index.json", *folder.glob("*/config.json")]:  # no paths of this machine
            assert "_name_or_path" not in config.read_text()
    assert (models / pk.PACKAGED["rem"] / "rem" / "config.json").is_file()
    assert not (models / pk.PACKAGED["finetune"] / "rem").exists()


def test_weights_are_fp16_and_equal_the_trained_ones(packaged):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    models, finals, _ = packaged
    for row, final in finals.items():
        stored = load_file(models / pk.PACKAGED[row] / "unet" / "diffusion_pytorch_model.safetensors")
        assert {t.dtype for t in stored.values()} == {torch.float16}
        trained = UNet2DConditionModel.from_pretrained(final / "unet").state_dict()
        assert all(torch.equal(stored[k], trained[k].half()) for k in trained)


def test_finetune_folder_edits_as_the_checkpoint_it_came_from(packaged):
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline

    models, finals, _ = packaged
    ip2p = StableDiffusionInstructPix2PixPipeline.from_pretrained(models / pk.PACKAGED["finetune"],
                                                                  torch_dtype=torch.float32)
    image = Image.new("RGB", (64, 48), (120, 40, 200))
    args = dict(prompt="remove the purple square", image=image, num_inference_steps=3, output_type="np")
    got = ip2p(**args, generator=torch.Generator().manual_seed(0)).images
    diffs = {}
    for row in ("finetune", "rem"):  # its own checkpoint, and another row's (different UNet weights)
        reference = ReferDiffusionPipeline.from_pretrained(finals[row], torch_dtype=torch.float32)
        for module in (reference.unet, reference.text_encoder):  # stored in fp16: round the same way
            module.load_state_dict({k: v.half().float() for k, v in module.state_dict().items()})
        want = reference(**args, generator=torch.Generator().manual_seed(0)).images
        assert got.shape == want.shape == (1, 48, 64, 3)
        diffs[row] = float(abs(got - want).max())
    assert diffs["finetune"] < 1e-3 < 1e-2 < diffs["rem"]


def test_refuses_rows_that_do_not_share_the_shipped_parts(packaged, tmp_path):
    models, finals, _ = packaged
    other = tmp_path / "other"
    shutil.copytree(finals["rem"], other)
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(other / "text_encoder")
    with torch.no_grad():
        next(iter(te.parameters())).add_(0.5)
    te.save_pretrained(other / "text_encoder")
    with pytest.raises(InputError, match="text encoder differs"):
        pk.package_row("rem_rcl", other, models)
    assert not (models / pk.PACKAGED["rem_rcl"]).exists()
    with pytest.raises(InputError, match="not a trained row"):
        pk.package_row("rem_rcl", tmp_path, models)
    with pytest.raises(InputError, match="unknown row"):
        pk.package_row("bogus", finals["rem"], models)
