"""Each loss term against an independent (numpy / loop) computation, and compute_losses on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from refcoco_edit.errors import DataError, InputError  # noqa: E402
from referdiffusion.losses import (  # noqa: E402
    LossConfig,
    any_downsample,
    compute_losses,
    edit_loss,
    encode_null_prompt,
    mask_loss,
    predicted_x0,
    region_control_loss,
    sample_conditioning_dropout,
    soft_downsample,
)
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np_mask_loss(logits, target, smooth):
    p = _sigmoid(logits)
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p)).mean()
    dices = []
    for pb, tb in zip(p, target):
        dices.append(1 - (2 * (pb * tb).sum() + smooth) / (pb.sum() + tb.sum() + smooth))
    return bce + float(np.mean(dices))


def _np_bilinear(x, size):
    """B x h x w -> B x H x W: bilinear between pixel centres, edges clamped (align_corners=False)."""
    out = np.asarray(x, np.float64)
    for axis, n_out in zip((1, 2), size):
        n_in = out.shape[axis]
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        w = (pos - lo).reshape([-1 if a == axis else 1 for a in range(3)])
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out


def _np_edit_loss(e, f, tok):
    out = []
    for eb, fb, tb in zip(e, f, tok):
        if tb.sum() == 0:
            continue
        target = fb[tb > 0].mean(0)
        out.append(1 - eb @ target / (np.linalg.norm(eb) * np.linalg.norm(target)))
    return float(np.mean(out))


def _np_rcl(x0, src, outside, valid, weights=None):
    num, den = 0.0, 0.0
    for b in range(x0.shape[0]):
        if not valid[b]:
            continue
        wb = 1.0 if weights is None else float(weights[b])
        for c in range(x0.shape[1]):
            for i in range(x0.shape[2]):
                for j in range(x0.shape[3]):
                    if outside[b, i, j]:
                        num += wb * abs(x0[b, c, i, j] - src[b, c, i, j])
                        den += 1
    return num / den


# --------------------------------------------------------------------------------------------
# pieces


def test_soft_and_any_downsampling():
    rng = np.random.default_rng(0)
    m = (rng.random((2, 64, 48)) > 0.7).astype(np.float32)
    m[1] = 0
    m[1, :, 5] = 1  # a one-pixel-wide line: thresholding would lose it
    soft = soft_downsample(torch.from_numpy(m), (8, 6)).numpy()
    blocks = m.reshape(2, 8, 8, 6, 8)
    np.testing.assert_allclose(soft, blocks.mean(axis=(2, 4)), rtol=1e-6)
    assert soft[1, :, 0].tolist() == [1 / 8] * 8
    anyd = any_downsample(torch.from_numpy(m)[:, None], (8, 6)).numpy()
    np.testing.assert_array_equal(anyd, blocks.max(axis=(2, 4)))
    with pytest.raises(DataError):
        soft_downsample(torch.zeros(2, 3, 8, 8), (4, 4))


def test_mask_loss_against_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 4)).astype(np.float32)
    target = rng.random((3, 5, 4)).astype(np.float32)
    target[2] = 0  # an empty mask
    got = mask_loss(torch.from_numpy(logits), torch.from_numpy(target), dice_smooth=1.0)
    assert got.item() == pytest.approx(_np_mask_loss(logits, target, 1.0), rel=1e-5)
    valid = torch.tensor([True, False, True])
    got = mask_loss(torch.from_numpy(logits), torch.from_numpy(target), valid, dice_smooth=0.5)
    assert got.item() == pytest.approx(_np_mask_loss(logits[[0, 2]], target[[0, 2]], 0.5), rel=1e-5)
    x = torch.from_numpy(logits).requires_grad_()
    zero = mask_loss(x, torch.from_numpy(target), torch.zeros(3, dtype=torch.bool))
    assert zero.item() == 0 and zero.requires_grad


def test_mask_loss_is_small_for_a_confident_right_prediction():
    target = torch.zeros(1, 8, 8)
    target[:, 2:5, 3:6] = 1
    good = mask_loss(target * 40 - 20, target, dice_smooth=1.0)
    bad = mask_loss(20 - target * 40, target, dice_smooth=1.0)
    assert good.item() < 1e-3 and bad.item() > 1.5


def test_edit_loss_against_numpy():
    rng = np.random.default_rng(2)
    e = rng.normal(size=(3, 16)).astype(np.float32)
    f = rng.normal(size=(3, 10, 16)).astype(np.float32)
    tok = np.zeros((3, 10), np.float32)
    tok[0, 2:4] = 1
    tok[1, 7] = 1  # sample 2: no P_e token, left out
    got = edit_loss(torch.from_numpy(e), torch.from_numpy(f), torch.from_numpy(tok))
    assert got.item() == pytest.approx(_np_edit_loss(e, f, tok), rel=1e-5)
    got = edit_loss(torch.from_numpy(e), torch.from_numpy(f), torch.from_numpy(tok), torch.tensor([False, True, True]))
    assert got.item() == pytest.approx(_np_edit_loss(e[1:2], f[1:2], tok[1:2]), rel=1e-5)
    # e_e equal to the target mean: zero distance; the target is detached
    f_t = torch.from_numpy(f).requires_grad_()
    e_t = torch.from_numpy(f[:, 2:4].mean(1)).requires_grad_()
    loss = edit_loss(e_t, f_t, torch.from_numpy(np.tile(tok[0], (3, 1))))
    assert loss.item() == pytest.approx(0, abs=1e-6)
    loss.backward()
    assert f_t.grad is None


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predicted_x0_recovers_the_clean_latent(kind):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=kind)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 4, 6, 6, generator=g)
    noise = torch.randn(4, 4, 6, 6, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    z = sched.add_noise(x0, noise, t)
    out = {"epsilon": noise, "v_prediction": sched.get_velocity(x0, noise, t), "sample": x0}[kind]
    torch.testing.assert_close(predicted_x0(z, out, t, sched), x0, rtol=1e-3, atol=2e-3)
    # the formula by hand, per sample
    if kind == "epsilon":
        for b in range(4):
            a = float(sched.alphas_cumprod[t[b]])
            by_hand = (z[b] - math.sqrt(1 - a) * noise[b]) / math.sqrt(a)
            torch.testing.assert_close(predicted_x0(z, out, t, sched)[b], by_hand, rtol=1e-4, atol=1e-4)


def test_region_control_loss_against_loops():
    rng = np.random.default_rng(4)
    x0 = rng.normal(size=(3, 4, 5, 5)).astype(np.float32)
    src = rng.normal(size=(3, 4, 5, 5)).astype(np.float32)
    outside = (rng.random((3, 5, 5)) > 0.4).astype(np.float32)
    valid = np.array([True, True, False])
    got = region_control_loss(torch.from_numpy(x0), torch.from_numpy(src), torch.from_numpy(outside),
                              torch.from_numpy(valid))
    assert got.item() == pytest.approx(_np_rcl(x0, src, outside, valid), rel=1e-5)
    # everything inside M_e: zero, still in the graph; the source gets no gradient
    x = torch.from_numpy(x0).requires_grad_()
    s = torch.from_numpy(src).requires_grad_()
    zero = region_control_loss(x, s, torch.zeros(3, 5, 5))
    assert zero.item() == 0 and zero.requires_grad
    region_control_loss(x, s, torch.from_numpy(outside)).backward()
    assert s.grad is None and x.grad.abs().sum() > 0


def test_conditioning_dropout_rates():
    text, image = sample_conditioning_dropout(20000, 0.05, torch.Generator().manual_seed(0))
    only_text = (text & ~image).float().mean().item()
    both = (text & image).float().mean().item()
    only_image = (image & ~text).float().mean().item()
    for rate in (only_text, both, only_image):
        assert rate == pytest.approx(0.05, abs=0.01)


def test_loss_config_checks():
    with pytest.raises(InputError):
        LossConfig(mask_weight=-1)
    with pytest.raises(InputError):
        LossConfig(rcl_weighting="snr")
    with pytest.raises(InputError, match="mask_resolution"):
        LossConfig(mask_resolution="pixel")
    assert not LossConfig(edit_weight=0).enabled("edit")


# --------------------------------------------------------------------------------------------
# compute_losses on the tiny InstructPix2Pix components


@pytest.fixture(scope="module")
def parts(tiny_cache):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from refcoco_edit.models.resolver import resolve
    from referdiffusion.rem import RegionEmbedder

    src = resolve("tiny-ip2p").source
    torch.manual_seed(0)
    rem = RegionEmbedder(text_dim=32, num_attention_heads=4, image_hidden_channels=16)
    with torch.no_grad():
        rem.gate.fill_(0.1)  # open, so that the REM matters to the UNet
    return {
        "unet": UNet2DConditionModel.from_pretrained(src, subfolder="unet"),
        "vae": AutoencoderKL.from_pretrained(src, subfolder="vae"),
        "text_encoder": CLIPTextModel.from_pretrained(src, subfolder="text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(src, subfolder="tokenizer"),
        "noise_scheduler": DDPMScheduler.from_pretrained(src, subfolder="scheduler"),
        "rem": rem,
    }


def _batch(parts, b: int = 2):
    from referdiffusion.text import spans_to_token_mask, tokenize

    g = torch.Generator().manual_seed(5)
    prompts = ["replace the cow on the left with a panda", "make the red car blue"][:b]
    edit_spans = [[(33, 40)], [(17, 21)]][:b]  # "a panda", "blue"
    tokens = tokenize(parts["tokenizer"], prompts)
    src_mask = torch.zeros(b, 64, 64)
    src_mask[:, 10:40, 5:30] = 1
    edit_mask = torch.zeros(b, 64, 64)
    edit_mask[:, 8:44, 3:34] = 1
    return {
        **tokens,
        "edited_pixel_values": torch.rand(b, 3, 64, 64, generator=g) * 2 - 1,
        "source_pixel_values": torch.rand(b, 3, 64, 64, generator=g) * 2 - 1,
        "source_mask": src_mask,
        "edit_mask": edit_mask,
        "edit_token_mask": spans_to_token_mask(parts["tokenizer"], prompts, edit_spans),
        "noise": torch.randn(b, 4, 8, 8, generator=g),
        "timesteps": torch.tensor([100, 900][:b]),
    }


def _models(parts):
    return {k: parts[k] for k in ("unet", "rem", "vae", "text_encoder", "noise_scheduler")}


def test_compute_losses_matches_an_independent_computation(parts):
    batch = _batch(parts)
    config = LossConfig(noise_weight=1.0, mask_weight=0.5, edit_weight=0.25, rcl_weight=2.0)
    out = compute_losses(batch, config=config, **_models(parts))

    # independent forward pieces: source latent, F_P, REM
    vae, unet, rem, sched = parts["vae"], parts["unet"], parts["rem"], parts["noise_scheduler"]
    sf = vae.config.scaling_factor
    t = batch["timesteps"]
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        src = vae.encode(batch["source_pixel_values"]).latent_dist.mode()
        f_p = parts["text_encoder"](batch["input_ids"])[0]
        rem_out = rem(f_p, src, batch["attention_mask"])
    pred = out.model_pred.detach()
    noise = batch["noise"]
    assert out.terms["noise"].item() == pytest.approx(float(((pred - noise) ** 2).mean()), rel=1e-5)
    soft = batch["source_mask"].numpy().reshape(2, 8, 8, 8, 8).mean(axis=(2, 4))
    assert out.terms["mask"].item() == pytest.approx(
        _np_mask_loss(rem_out.mask_logits.numpy(), soft, 1.0), rel=1e-4)
    assert out.terms["edit"].item() == pytest.approx(
        _np_edit_loss(rem_out.edit_embedding.numpy(), f_p.numpy(), batch["edit_token_mask"].numpy()), rel=1e-4)
    # at the image's resolution: the logits upsampled bilinearly (pixel centres, edges clamped), hard M
    image_level = compute_losses(batch, config=LossConfig(mask_resolution="image"), **_models(parts))
    up = _np_bilinear(rem_out.mask_logits.numpy(), batch["source_mask"].shape[-2:])
    assert image_level.terms["mask"].item() == pytest.approx(
        _np_mask_loss(up, batch["source_mask"].numpy().reshape(up.shape), 1.0), rel=1e-4)
    outside = 1 - batch["edit_mask"].numpy().reshape(2, 8, 8, 8, 8).max(axis=(2, 4))
    assert set(out.terms) == {"noise", "mask", "edit", "rcl"}
    total = sum(config.weight(k) * v for k, v in out.terms.items())
    assert out.loss.item() == pytest.approx(float(total), rel=1e-6)
    # given latents instead of pixels, the RCL term follows z0^ = (z_t - sqrt(1-a) eps^) / sqrt(a)
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    batch2 = {**batch, "edited_latents": z0, "source_latents": src}
    out2 = compute_losses(batch2, config=LossConfig(mask_weight=0, edit_weight=0), **_models(parts))
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    x0_hat = ((z_t - (1 - a).sqrt() * out2.model_pred.detach()) / a.sqrt()).numpy()
    assert out2.terms["rcl"].item() == pytest.approx(
        _np_rcl(x0_hat, (src * sf).numpy(), outside, [True, True]), rel=1e-4)
    sqrt_a = compute_losses(batch2, config=LossConfig(mask_weight=0, edit_weight=0, rcl_weighting="sqrt_alpha"),
                            **_models(parts))
    assert sqrt_a.terms["rcl"].item() == pytest.approx(
        _np_rcl(x0_hat, (src * sf).numpy(), outside, [True, True], a.sqrt().flatten().numpy()), rel=1e-4)
    with torch.no_grad():
        expected_pred = unet(torch.cat([z_t, src], 1), t, encoder_hidden_states=rem_out.condition).sample
    torch.testing.assert_close(out2.model_pred, expected_pred, rtol=1e-4, atol=1e-5)


def test_gradients_reach_unet_and_every_rem_part(parts):
    for m in (parts["unet"], parts["rem"]):
        m.zero_grad(set_to_none=True)
    out = compute_losses(_batch(parts), **_models(parts))
    out.loss.backward()
    rem = parts["rem"]
    for name in ("gate", "mask_mlp.0.weight", "edit_out.weight", "image_proj.0.weight", "fusion_attn.q.weight"):
        grad = dict(rem.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert parts["unet"].conv_in.weight.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in parts["text_encoder"].parameters())
    for m in (parts["unet"], parts["rem"]):
        m.zero_grad(set_to_none=True)


def test_terms_switch_off_and_their_inputs_become_optional(parts):
    batch = _batch(parts)
    for key in ("source_mask", "edit_mask", "edit_token_mask"):
        del batch[key]
    out = compute_losses(batch, config=LossConfig(mask_weight=0, edit_weight=0, rcl_weight=0), **_models(parts))
    assert set(out.terms) == {"noise"}
    with pytest.raises(DataError, match="source_mask"):
        compute_losses(batch, config=LossConfig(edit_weight=0, rcl_weight=0), **_models(parts))
    # plain InstructPix2Pix fine-tune: no REM, the UNet sees F_P
    models = {**_models(parts), "rem": None}
    plain = compute_losses(batch, config=LossConfig(mask_weight=0, edit_weight=0, rcl_weight=0), **models)
    assert plain.rem_output is None and set(plain.terms) == {"noise"}
    with pytest.raises(InputError, match="REM"):
        compute_losses(batch, config=LossConfig(), **models)
    with pytest.raises(InputError):
        compute_losses(batch, config=LossConfig(0, 0, 0, 0), **_models(parts))


def test_conditioning_dropout_in_compute_losses(parts):
    batch = _batch(parts)
    null = encode_null_prompt(parts["tokenizer"], parts["text_encoder"])
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    batch["edited_latents"] = z0
    dropped = {**batch, "drop_text": torch.tensor([True, True]), "drop_image": torch.tensor([False, True])}
    out = compute_losses(dropped, null_prompt=null, **_models(parts))
    assert out.terms["mask"].item() == 0 and out.terms["edit"].item() == 0
    # the same as feeding the empty prompt and a zero image for sample 1 by hand
    from referdiffusion.text import tokenize

    empty = tokenize(parts["tokenizer"], ["", ""])
    with torch.no_grad():
        src = parts["vae"].encode(batch["source_pixel_values"]).latent_dist.mode()
    src[1] = 0
    by_hand = {**batch, **empty, "source_latents": src}
    ref = compute_losses(by_hand, config=LossConfig(mask_weight=0, edit_weight=0, rcl_weight=0), **_models(parts))
    torch.testing.assert_close(out.model_pred, ref.model_pred, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="null_prompt"):
        compute_losses(dropped, **_models(parts))
