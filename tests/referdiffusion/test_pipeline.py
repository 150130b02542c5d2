"""`referdiffusion init` + `ReferDiffusionPipeline`: checkpoint layout, load round trip, and the reference
check against diffusers' `StableDiffusionInstructPix2PixPipeline`."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from refcoco_edit.errors import InputError  # noqa: E402
from referdiffusion.init import init_checkpoint, widen_conv_in  # noqa: E402
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)

STEPS = 4


@pytest.fixture(scope="module")
def checkpoint(tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("rd") / "ckpt"
    report = init_checkpoint("tiny-ip2p", out)
    assert report.source_kind == "instruct-pix2pix" and not report.widened_conv_in
    return out


@pytest.fixture(scope="module")
def pipe(checkpoint):
    from referdiffusion import ReferDiffusionPipeline

    p = ReferDiffusionPipeline.from_pretrained(checkpoint)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def ip2p(pipe):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    p = StableDiffusionInstructPix2PixPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    p.set_progress_bar_config(disable=True)
    return p


def _images(n: int, size: int = 64):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _gen(seed: int = 0):
    return torch.Generator().manual_seed(seed)


def test_checkpoint_layout(checkpoint):
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "rem"):
        assert (checkpoint / sub).is_dir(), sub
    index = json.loads((checkpoint / "model_index.json").read_text())
    assert index["_class_name"] == "ReferDiffusionPipeline"
    assert index["rem"] == ["referdiffusion.rem", "RegionEmbedder"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert json.loads((checkpoint / "rem" / "config.json").read_text())["text_dim"] == 32
    assert json.loads((checkpoint / "unet" / "config.json").read_text())["in_channels"] == 8


def test_round_trip_keeps_every_weight(checkpoint, pipe):
    from refcoco_edit.models.resolver import resolve
    from referdiffusion.init import make_pipeline

    fresh = make_pipeline(resolve("tiny-ip2p").source)
    assert type(pipe.rem).__name__ == "RegionEmbedder" and type(pipe.scheduler).__name__ == "DDIMScheduler"
    for name in ("rem", "unet", "vae", "text_encoder"):
        a, b = getattr(fresh, name).state_dict(), getattr(pipe, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.count_nonzero(pipe.rem.gate.detach()) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # default scales: three guidance branches
        {"guidance_scale": 3.0, "image_guidance_scale": 1.2, "negative_prompt": "blurry"},
        {"guidance_scale": 1.0},  # no guidance: one branch
    ],
    ids=["default", "negative", "no-guidance"],
)
def test_fresh_checkpoint_reproduces_instruct_pix2pix(pipe, ip2p, kwargs):
    image = _images(1)[0]
    a = pipe("replace the cow on the left with a panda", image, num_inference_steps=STEPS, generator=_gen(),
             output_type="np", **kwargs)
    b = ip2p("replace the cow on the left with a panda", image, num_inference_steps=STEPS, generator=_gen(),
             output_type="np", **kwargs)
    assert a.images.shape == b.images.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers' note on duplicating the image
def test_batch_of_images_reproduces_instruct_pix2pix(pipe, ip2p):
    images = _images(2)
    prompts = ["make the car red", "remove the dog"]
    a = pipe(prompts, images, num_inference_steps=STEPS, generator=_gen(1), output_type="np")
    b = ip2p(prompts, images, num_inference_steps=STEPS, generator=_gen(1), output_type="np")
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)
    assert a.masks.shape == (2, 64, 64)
    # several images per prompt (one source image, where diffusers' pairing is unambiguous)
    c = pipe("make the car red", images[0], num_inference_steps=STEPS, num_images_per_prompt=2,
             generator=_gen(2), output_type="np")
    d = ip2p("make the car red", images[0], num_inference_steps=STEPS, num_images_per_prompt=2,
             generator=_gen(2), output_type="np")
    np.testing.assert_allclose(c.images, d.images, atol=1e-6)
    assert c.images.shape[0] == 2 and c.masks.shape == (2, 64, 64)


def test_one_prompt_is_broadcast_over_images_and_one_image_over_prompts(pipe):
    images = _images(2)
    a = pipe("make it red", images, num_inference_steps=2, generator=_gen(), output_type="np")
    b = pipe(["make it red"] * 2, images, num_inference_steps=2, generator=_gen(), output_type="np")
    np.testing.assert_array_equal(a.images, b.images)
    c = pipe(["make it red", "make it blue"], images[0], num_inference_steps=2, generator=_gen(), output_type="np")
    d = pipe(["make it red", "make it blue"], [images[0]] * 2, num_inference_steps=2, generator=_gen(),
             output_type="np")
    np.testing.assert_allclose(c.images, d.images, atol=1e-5)  # VAE on 1 vs 2 images: float noise only
    with pytest.raises(ValueError, match="3 images for 2 prompts"):
        pipe(["a", "b"], images + images[:1], num_inference_steps=1)


def test_masks_are_the_rem_prediction_upsampled(pipe):
    import torch.nn.functional as F

    image = _images(1)[0]
    prompt = "replace the cow on the left with a panda"
    out = pipe(prompt, image, num_inference_steps=1, output_type="pt", generator=_gen())
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(image)
        latent = pipe.vae.encode(pixels).latent_dist.mode()
        enc = pipe.tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        f_p = pipe.text_encoder(enc.input_ids)[0]
        logits = pipe.rem(f_p, latent, enc.attention_mask).mask_logits
    expected = torch.sigmoid(F.interpolate(logits[:, None], size=(64, 64), mode="bilinear", align_corners=False))[:, 0]
    torch.testing.assert_close(out.masks, expected)
    pil = pipe(prompt, image, num_inference_steps=1, generator=_gen(), mask_threshold=float(expected.median()))
    m = np.asarray(pil.masks[0])
    assert pil.masks[0].mode == "L" and m.shape == (64, 64) and set(np.unique(m)) == {0, 255}
    np.testing.assert_array_equal(m == 255, (expected[0] > expected.median()).numpy())


def test_opening_the_gate_changes_the_edit(checkpoint, ip2p):
    from referdiffusion import ReferDiffusionPipeline

    p = ReferDiffusionPipeline.from_pretrained(checkpoint)
    p.set_progress_bar_config(disable=True)
    with torch.no_grad():
        p.rem.gate.fill_(1.0)
    image = _images(1)[0]
    a = p("make the car red", image, num_inference_steps=STEPS, generator=_gen(), output_type="np")
    b = ip2p("make the car red", image, num_inference_steps=STEPS, generator=_gen(), output_type="np")
    assert np.abs(a.images - b.images).max() > 1e-3


def test_init_from_stable_diffusion_widens_the_first_convolution(tiny_cache, tmp_path):
    from diffusers import UNet2DConditionModel

    from refcoco_edit.models.resolver import resolve

    report = init_checkpoint("tiny-sd15", tmp_path / "ck")
    assert report.source_kind == "stable-diffusion" and report.widened_conv_in
    sd = UNet2DConditionModel.from_pretrained(resolve("tiny-sd15").source, subfolder="unet").eval()
    wide = UNet2DConditionModel.from_pretrained(tmp_path / "ck", subfolder="unet").eval()
    assert wide.config.in_channels == 8 and wide.conv_in.weight.shape[1] == 8
    assert torch.equal(wide.conv_in.weight[:, :4], sd.conv_in.weight)
    assert torch.count_nonzero(wide.conv_in.weight[:, 4:]) == 0
    g = _gen(3)
    z, src = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    text = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        a = wide(torch.cat([z, src], 1), 10, encoder_hidden_states=text).sample
        b = sd(z, 10, encoder_hidden_states=text).sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError):
        widen_conv_in(wide, 4)


def test_init_refuses_a_non_empty_folder_and_unknown_names(tiny_cache, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(InputError, match="not empty"):
        init_checkpoint("tiny-ip2p", tmp_path / "x")
    with pytest.raises(InputError, match="neither a folder nor a model name"):
        init_checkpoint("no-such-model", tmp_path / "y")


def test_init_from_a_missing_model_name_names_the_setting(tmp_path, monkeypatch):
    from refcoco_edit.errors import ModelNotAvailableError

    for var in ("REFCOCO_EDIT_MODEL_IP2P", "REFCOCO_EDIT_MODEL_SD15"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REFCOCO_EDIT_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("ip2p", "sd15"):
        with pytest.raises(ModelNotAvailableError, match=f"REFCOCO_EDIT_MODEL_{name.upper()}"):
            init_checkpoint(name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ddim_from_an_euler_config_keeps_the_schedule_and_sd_settings():
    from referdiffusion.init import ddim_scheduler

    euler = {"_class_name": "EulerAncestralDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
             "steps_offset": 1, "trained_betas": None}
    ddim = ddim_scheduler(euler)
    assert type(ddim).__name__ == "DDIMScheduler"
    assert ddim.config.clip_sample is False and ddim.config.set_alpha_to_one is False
    assert ddim.config.prediction_type == "v_prediction" and ddim.config.beta_schedule == "scaled_linear"
    assert ddim_scheduler({**euler, "clip_sample": True}).config.clip_sample is False  # never right for latents


def test_generate_mask_equals_the_masks_of_an_edit(pipe):
    with torch.no_grad():
        pipe.rem.gate.fill_(0.5)  # an open gate, so that the guidance branches differ in their condition
    try:
        images = _images(3)
        prompts = ["replace the cow on the left with a panda", "remove the dog", "make the car red"]
        edit = pipe(prompts, images, num_inference_steps=1, output_type="pt", generator=_gen())
        alone = pipe.generate_mask(prompts, images, output_type="pt")
        torch.testing.assert_close(alone, edit.masks)
        pil = pipe.generate_mask(prompts[0], images[0])
        expected = pipe(prompts[0], images[0], num_inference_steps=1, generator=_gen()).masks
        np.testing.assert_array_equal(np.asarray(pil[0]), np.asarray(expected[0]))
        with pytest.raises(ValueError, match="exactly one"):
            pipe.generate_mask(image=images[0])
    finally:
        with torch.no_grad():
            pipe.rem.gate.zero_()
