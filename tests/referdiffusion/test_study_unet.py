"""The UNet planned for the study's rows: InstructPix2Pix's 8-channel layout at the study's latent size."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from referdiffusion.study import unet as su  # noqa: E402
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


def test_planned_unet_shape_and_size():
    unet = su.build_unet().eval()
    n = sum(p.numel() for p in unet.parameters())
    assert 2.5e6 < n < 2.9e6  # four rows in fp16 within the 40 MB for shipped weights
    x = torch.randn(2, 8, *su.LATENT_HW)
    with torch.no_grad():
        out = unet(x, torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, 5, 64)).sample
    assert out.shape == (2, 4, *su.LATENT_HW)


def test_step_timer_trains_and_reports():
    r = su.time_training_step(batch_size=2, steps=2, warmup=1, tokens=4)
    assert r["steps"] == 2 and r["params"] > 0 and 0 < r["min_s"] <= r["median_s"]
