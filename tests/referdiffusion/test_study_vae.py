"""The RefShapes VAE: training lowers reconstruction error, a killed run resumes exactly, the fp16 export loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from refcoco_edit.errors import InputError  # noqa: E402
from referdiffusion.study import vae as sv  # noqa: E402
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Flat-colour rectangles on a grey gradient: RefShapes-like images at 32 x 24."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 24, 32, 3), np.uint8)
    for i in range(n):
        img = np.full((24, 32, 3), 110, np.int32) + np.arange(32)[None, :, None]
        y, x = rng.integers(0, 16), rng.integers(0, 24)
        img[y:y + 8, x:x + 8] = rng.integers(0, 256, size=3)
        out[i] = img.clip(0, 255)
    return out


def _cfg(**kw) -> sv.VAEConfig:
    base = dict(block_out_channels=(16, 16), steps=60, batch_size=4, lr=3e-3, warmup=5, val_every=30,
                checkpoint_every_s=1e9)
    return sv.VAEConfig(**{**base, **kw})


def test_training_lowers_reconstruction_error(tmp_path):
    train, val = _images(8), _images(4, seed=1)
    cfg = _cfg()
    before = sv.reconstruction_psnr(sv.build_vae(cfg).eval(), val).mean()
    vae = sv.train_vae(cfg, train, val, tmp_path)
    after = sv.reconstruction_psnr(vae.eval(), val).mean()
    assert after > before + 3, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_psnr" in r] == [30, 60]
    assert rows[-1]["val_psnr"] == pytest.approx(after, abs=0.05)  # best = last here, and it is what came back


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    train, val = _images(6), _images(2, seed=1)
    cfg = _cfg(steps=6, val_every=3)
    whole = sv.train_vae(cfg, train, val, tmp_path / "whole")
    chunked = _cfg(steps=6, val_every=3, checkpoint_every_s=0.0)
    calls = 0
    while True:  # max_seconds=0: stop after each step's checkpoint, as if killed there
        calls += 1
        sv.train_vae(chunked, train, val, tmp_path / "chunks", max_seconds=0.0)
        if torch.load(tmp_path / "chunks" / "checkpoint.pt", weights_only=False)["step"] == 6:
            break
    assert calls == 6
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "chunks" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert whole is not None


def test_shortened_schedule_is_recorded_and_replays_exactly(tmp_path):
    train, val = _images(6), _images(2, seed=1)
    for folder in ("a", "b"):
        sv.train_vae(_cfg(steps=8, val_every=2), train, val, tmp_path / folder, stop_at=2)
    ck = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 2 and ck["schedule"] == [[0, 8]]
    sv.train_vae(_cfg(steps=4, val_every=2), train, val, tmp_path / "a")  # shortened at step 2
    ck = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 4 and ck["schedule"] == [[0, 8], [2, 4]]
    assert any("schedule_change" in line for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines())
    sv.train_vae(_cfg(steps=4, val_every=2), train, val, tmp_path / "b")  # the replay
    other = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    for k, v in ck["model"].items():
        torch.testing.assert_close(v, other[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="must be larger"):
        sv.train_vae(_cfg(steps=3, val_every=2), train, val, tmp_path / "a")


def test_resume_refuses_another_config(tmp_path):
    train, val = _images(4), _images(2, seed=1)
    sv.train_vae(_cfg(steps=2, val_every=2), train, val, tmp_path)
    with pytest.raises(InputError, match="another config"):
        sv.train_vae(_cfg(steps=2, val_every=2, lr=1e-2), train, val, tmp_path)


def test_fp16_export_loads_with_diffusers_and_keeps_the_scale(tmp_path):
    from diffusers import AutoencoderKL

    vae = sv.build_vae(_cfg()).eval()
    images = _images(4)
    scale = sv.latent_scaling_factor(vae, images)
    folder = sv.export_fp16(vae, tmp_path / "refshapes-vae", scale)
    sv.export_fp16(vae, folder, scale)  # a second export replaces the first
    from safetensors import safe_open

    with safe_open(folder / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert "_name_or_path" not in json.loads((folder / "config.json").read_text())
    loaded = AutoencoderKL.from_pretrained(folder)
    assert loaded.config.scaling_factor == pytest.approx(scale)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    ref = sv.reconstruct(vae, images)
    got = sv.reconstruct(loaded.float(), images)
    assert np.abs(ref.astype(int) - got.astype(int)).max() <= 3
    with torch.no_grad():
        z = torch.cat([vae.encode(sv.to_tensor(images)).latent_dist.mean])
    assert float((z * scale).std()) == pytest.approx(1.0, rel=1e-4)


def test_config_is_checked():
    with pytest.raises(InputError, match="norm_num_groups"):
        sv.VAEConfig(block_out_channels=(12, 16))
    with pytest.raises(InputError, match="steps"):
        sv.VAEConfig(steps=0)
