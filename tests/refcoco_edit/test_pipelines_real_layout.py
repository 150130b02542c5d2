"""The pipelines on folders laid out as the real repositories are (`tests.fixtures_real_layout`).

Each pipeline loads a tiny model saved with float16 components, the repository's own scheduler, old
config keys and a safety checker, and must give what it gives on the same weights saved plainly (all
float32, Stable Diffusion's DDIM). Also: the DDIM conversion keeps the source's settings with
`clip_sample=False`, `--dtype float16` places every component in float16, loading is quiet when asked,
and the record names the folder actually read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures_real_layout import save_real_layout, save_reference
from tests.torch_threads import one_torch_thread

STEPS = 3
one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


def _image(size: int = 64) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rgb = np.dstack([127 + 100 * np.sin(xx / 7), 127 + 100 * np.cos(yy / 9), np.full_like(xx, 60)])
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _mask(size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[16:40, 24:48] = 1
    return m


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (real layout, plain reference) for the three diffusion pipelines' tiny models."""
    root = tmp_path_factory.mktemp("real-layout")
    out = {}
    for name in ("tiny-sd15", "tiny-sd-inpaint", "tiny-paint-by-example"):
        out[name] = (save_real_layout(name, root / "real" / name), save_reference(name, root / "ref" / name))
    return out


def _pixels(cands) -> np.ndarray:
    return np.stack([np.asarray(c.image, np.int16) for c in cands])


def _run(pipeline: str, folder: Path, model: str, **kwargs):
    from refcoco_edit.pipelines import get_pipeline

    pipe = get_pipeline(pipeline, model, {model: str(folder)}, device="cpu", progress=False)
    return pipe, pipe.generate(_image(), _mask(), num=2, seed=3, steps=STEPS, **kwargs)


# the resolver names that stand for each tiny model (any non-tiny name takes a folder override)
CASES = [
    ("region_edit", "tiny-sd15", "sd15", {"text": "a red ball"}),
    ("inpaint", "tiny-sd15", "sd15", {}),
    ("inpaint", "tiny-sd-inpaint", "sd-inpaint", {}),
    ("composition", "tiny-paint-by-example", "paint-by-example", {"example": _image(48)}),
]


@pytest.mark.parametrize(("pipeline", "tiny", "model", "kwargs"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_real_layout_runs_in_one_dtype_and_equals_the_plain_folder(folders, pipeline, tiny, model, kwargs):
    import torch

    from refcoco_edit.models.components import check_one_dtype

    real, ref = folders[tiny]
    pipe, got = _run(pipeline, real, model, **kwargs)
    assert check_one_dtype(pipe.pipe) == torch.float32
    _, want = _run(pipeline, ref, model, **kwargs)
    assert np.abs(_pixels(got) - _pixels(want)).max() <= 1  # same weights, same sampler
    assert type(pipe.pipe.scheduler).__name__ == "DDIMScheduler" and pipe.pipe.scheduler.config.clip_sample is False


def test_float16_asked_for_places_every_component_in_float16(folders):
    import torch

    from refcoco_edit.models.components import check_one_dtype
    from refcoco_edit.pipelines import get_pipeline

    real, _ = folders["tiny-sd15"]
    pipe = get_pipeline("region_edit", "sd15", {"sd15": str(real)}, device="cpu", dtype="float16", progress=False)
    assert check_one_dtype(pipe.pipe) == torch.float16  # (fp16 compute on this CPU is not asked of it here)


# --------------------------------------------------------------------------------------------
# the DDIM conversion


def test_ddim_from_pndm_without_clip_sample_does_not_clip():
    """The washed-out composition: PNDM configs have no clip_sample, and DDIM's default is True."""
    from diffusers import DDIMScheduler

    from refcoco_edit.models.components import sd_ddim_scheduler
    from tests.fixtures_real_layout import make_scheduler

    pndm = make_scheduler("pndm")
    assert "clip_sample" not in pndm.config
    naive = DDIMScheduler.from_config(pndm.config)
    assert naive.config.clip_sample is True  # the behaviour the helper exists to avoid
    ddim = sd_ddim_scheduler(pndm)
    assert ddim.config.clip_sample is False
    for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "steps_offset", "set_alpha_to_one",
                "prediction_type", "timestep_spacing"):
        assert ddim.config[key] == pndm.config[key], key


def test_ddim_keeps_every_setting_it_knows_and_always_unclips():
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    from refcoco_edit.models.components import sd_ddim_scheduler

    euler = EulerAncestralDiscreteScheduler(beta_start=0.001, beta_end=0.02, beta_schedule="linear",
                                            prediction_type="v_prediction", timestep_spacing="trailing",
                                            steps_offset=0, rescale_betas_zero_snr=True)
    ddim = sd_ddim_scheduler(euler.config)
    want = {"beta_start": 0.001, "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "v_prediction",
            "timestep_spacing": "trailing", "steps_offset": 0, "rescale_betas_zero_snr": True,
            "set_alpha_to_one": False, "clip_sample": False}
    assert {k: ddim.config[k] for k in want} == want
    clipped = DDIMScheduler(clip_sample=True, set_alpha_to_one=True, thresholding=False)
    again = sd_ddim_scheduler(clipped)
    assert again.config.clip_sample is False and again.config.set_alpha_to_one is True  # the source's own
    # the same timesteps and step results as a DDIM written out with those settings
    hand = DDIMScheduler(**{k: clipped.config[k] for k in clipped.config if not k.startswith("_")} | {
        "clip_sample": False})
    again.set_timesteps(5)
    hand.set_timesteps(5)
    assert again.timesteps.tolist() == hand.timesteps.tolist()


# --------------------------------------------------------------------------------------------
# quiet loading and provenance


def test_loading_is_quiet_without_progress_and_the_settings_come_back(folders, capfd):
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from refcoco_edit.pipelines import get_pipeline

    real, _ = folders["tiny-sd15"]
    level = dlog.get_verbosity()
    capfd.readouterr()
    get_pipeline("region_edit", "sd15", {"sd15": str(real)}, device="cpu", progress=False)
    captured = capfd.readouterr()
    assert "Loading pipeline components" not in captured.err + captured.out
    assert "Loading weights" not in captured.err + captured.out
    assert dlog.get_verbosity() == level and dlog.is_progress_bar_enabled() and tlog.is_progress_bar_enabled()
    get_pipeline("region_edit", "sd15", {"sd15": str(real)}, device="cpu", progress=True)
    assert "Loading pipeline components" in capfd.readouterr().err  # the check above can fail


def test_record_names_the_folder_actually_read(folders, tmp_path, monkeypatch):
    real, _ = folders["tiny-sd15"]
    link = tmp_path / "models" / "my-sd"
    link.parent.mkdir()
    os.symlink(real, link)
    monkeypatch.chdir(tmp_path)
    _, cands = _run("region_edit", Path("./models/my-sd"), "sd15", text="a red ball")
    assert cands[0].params["model"] == "sd15"
    assert cands[0].params["model_folder"] == str(real.resolve())
    _, cands = _run("inpaint", Path("models/../models/my-sd"), "sd15")  # the blended-latent path of inpaint
    assert cands[0].params["model_folder"] == str(real.resolve())


def test_clip_ranking_with_a_float16_saved_clip(folders, tmp_path, tiny_cache):
    """The ranker's CLIP saved in float16 (transformers 5 loads it so) is placed in the pipeline's dtype:
    the scores are those of the same weights saved in float32 (rounded through float16)."""
    import torch
    from transformers import CLIPModel

    from refcoco_edit.models.resolver import resolve
    from refcoco_edit.pipelines import get_pipeline

    tiny_clip = resolve("tiny-clip").source
    scores = {}
    for kind, dtype in (("half", torch.float16), ("rounded", torch.float32)):
        model = CLIPModel.from_pretrained(tiny_clip).to(torch.float16).to(dtype)
        folder = tmp_path / kind
        model.save_pretrained(folder)
        for extra in Path(tiny_clip).iterdir():  # tokenizer and processor files
            if extra.suffix in (".json", ".txt") and extra.name != "config.json":
                (folder / extra.name).write_bytes(extra.read_bytes())
        real, _ = folders["tiny-sd15"]
        pipe = get_pipeline("region_edit", "sd15", {"sd15": str(real), "clip-vit-l14": str(folder)}, device="cpu",
                            progress=False)
        cands = pipe.generate(_image(), _mask(), text="a red ball", num=2, seed=1, steps=2, rank_by="clip-vit-l14")
        assert pipe._rankers["clip-vit-l14"].model.dtype == torch.float32
        scores[kind] = sorted(c.score for c in cands)
    np.testing.assert_allclose(scores["half"], scores["rounded"], atol=1e-4)
