"""Region-Embedder Module: shapes, the zero gate, the mask head and pooling, save/load."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from referdiffusion.rem import RegionEmbedder  # noqa: E402
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)

D, L, C, H, W = 32, 12, 4, 8, 6


def _rem(**kwargs) -> RegionEmbedder:
    torch.manual_seed(0)
    rem = RegionEmbedder(text_dim=D, latent_channels=C, num_attention_heads=4, image_hidden_channels=16, **kwargs)
    return rem.eval()


def _inputs(b: int = 2):
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(b, L, D, generator=g)
    latents = torch.randn(b, C, H, W, generator=g)
    mask = torch.ones(b, L, dtype=torch.long)
    mask[0, 7:] = 0  # sample 0 has padding
    return embeds, latents, mask


def test_shapes_and_fresh_rem_returns_prompt_embedding_exactly():
    rem = _rem()
    embeds, latents, mask = _inputs()
    out = rem(embeds, latents, mask)
    assert torch.equal(out.condition, embeds)  # bit for bit, not just close
    assert out.mask_logits.shape == (2, H, W)
    for e in (out.edit_embedding, out.referring_embedding, out.vision_embedding, out.referring_feature):
        assert e.shape == (2, D)
    assert torch.isfinite(out.mask_logits).all()


def test_gate_gets_gradient_and_opening_it_changes_the_condition():
    rem = _rem()
    embeds, latents, mask = _inputs()
    out = rem(embeds, latents, mask)
    out.condition.pow(2).sum().backward()
    assert rem.gate.grad is not None and rem.gate.grad.abs().sum() > 0
    with torch.no_grad():
        rem.gate.fill_(1.0)
    assert not torch.allclose(rem(embeds, latents, mask).condition, embeds)


def test_mask_head_and_vision_embedding_match_their_definitions():
    rem = _rem()
    embeds, latents, mask = _inputs()
    with torch.no_grad():
        rem.mask_bias.fill_(0.3)
        out = rem(embeds, latents, mask)
        f_s = rem.image_features(latents)  # B x D x h x w
        kernel = rem.mask_mlp(out.referring_feature)
        for b in range(2):
            for i in range(H):
                for j in range(W):
                    expected = float(f_s[b, :, i, j] @ kernel[b]) / math.sqrt(D) + 0.3
                    assert out.mask_logits[b, i, j].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
            s = torch.sigmoid(out.mask_logits[b])
            e_v = sum(s[i, j] * f_s[b, :, i, j] for i in range(H) for j in range(W)) / s.sum()
            torch.testing.assert_close(out.vision_embedding[b], e_v, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.referring_embedding[b], rem.refer_mlp(out.referring_feature[b]))


@pytest.mark.parametrize("image_text_layers", [0, 2])
def test_padding_tokens_do_not_reach_the_pooled_embeddings(image_text_layers):
    rem = _rem(image_text_layers=image_text_layers)
    embeds, latents, mask = _inputs()
    changed = embeds.clone()
    changed[0, 7:] += 5.0  # only padding positions of sample 0
    with torch.no_grad():
        a, b = rem(embeds, latents, mask), rem(changed, latents, mask)
    for name in ("edit_embedding", "referring_feature", "referring_embedding", "vision_embedding", "mask_logits"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    # ...while they do matter without the mask
    with torch.no_grad():
        c, d = rem(embeds, latents), rem(changed, latents)
    assert not torch.allclose(c.edit_embedding[0], d.edit_embedding[0])


def test_plain_per_position_projection_option():
    rem = _rem(image_conv_layers=0)
    assert len(rem.image_proj) == 1 and rem.image_proj[0].kernel_size == (1, 1)
    embeds, latents, mask = _inputs()
    # a per-position map: F_s at a position depends only on the latent there
    shifted = latents.clone()
    shifted[:, :, 0, 0] += 1.0
    with torch.no_grad():
        a, b = rem.image_features(latents), rem.image_features(shifted)
    assert torch.equal(a[:, :, 1:, :], b[:, :, 1:, :]) and not torch.equal(a[:, :, 0, 0], b[:, :, 0, 0])


def test_coordinate_channels_tell_places_apart_and_ignore_padding(tmp_path):
    rem = _rem(image_conv_layers=0, coordinates=True, coordinate_extent=4.0)
    assert rem.image_proj[0].in_channels == C + 2
    flat = torch.zeros(1, C, H, W)  # the same latent everywhere: only the position differs
    with torch.no_grad():
        f = rem.image_features(flat)
        plain = _rem(image_conv_layers=0).image_features(flat)
    assert torch.equal(plain[..., 0, 0], plain[..., 3, 5])  # without coordinates: no way to tell
    assert not torch.allclose(f[..., 0, 0], f[..., 3, 5]) and not torch.allclose(f[..., 3, 0], f[..., 3, 5])
    grid = rem.coordinate_map(flat)
    assert grid[0, 0, 2, 3] == (3 + 0.5) / 4 and grid[0, 1, 2, 3] == (2 + 0.5) / 4
    # a picture padded at its bottom and right keeps its cells' coordinates (and so their features)
    padded = torch.cat([torch.cat([flat, torch.ones(1, C, 2, W)], 2), torch.ones(1, C, H + 2, 3)], 3)
    with torch.no_grad():
        torch.testing.assert_close(rem.image_features(padded)[..., :H, :W], f)
    rem.save_pretrained(tmp_path / "rem")
    assert RegionEmbedder.from_pretrained(tmp_path / "rem").config.coordinates is True


def test_image_text_layers_let_each_position_read_the_prompt():
    rem = _rem(image_text_layers=1)
    assert len(rem.image_text_blocks) == 1 and len(_rem().image_text_blocks) == 0
    embeds, latents, mask = _inputs()
    with torch.no_grad():
        out = rem(embeds, latents, mask)
        torch.testing.assert_close(out.condition, embeds)  # the zero gate still returns F_P
        # the mask is no longer <F_s(p), k> with F_s from the latent alone: rebuild that and compare
        plain = rem.image_features(latents)
        kernel = rem.mask_mlp(out.referring_feature)
        plain_logits = torch.einsum("bdhw,bd->bhw", plain, kernel) / math.sqrt(D) + rem.mask_bias
        assert not torch.allclose(plain_logits, out.mask_logits)
        # ...the cross-attention block applied to F_s's positions gives it back
        tokens = rem.image_text_blocks[0](plain.flatten(2).transpose(1, 2), embeds, mask)
        fused = tokens.transpose(1, 2).reshape(plain.shape)
        expected = torch.einsum("bdhw,bd->bhw", fused, kernel) / math.sqrt(D) + rem.mask_bias
        torch.testing.assert_close(out.mask_logits, expected)


def test_image_self_attention_lets_a_position_see_the_far_side_of_the_picture():
    # per-position features and cross-attention to the prompt see one position (the convolutions a few,
    # and their GroupNorm the picture's statistics, so they are left out here); self-attention among the
    # positions sees all of them: change one corner, read the opposite one
    embeds, _, mask = _inputs()
    latents = torch.randn(2, C, 16, 16)
    moved = latents.clone()
    moved[:, :, 0, 0] += 3.0
    for self_attention, reaches in ((False, False), (True, True)):
        rem = _rem(image_conv_layers=0, image_text_layers=1, image_self_attention=self_attention)
        with torch.no_grad():
            far = rem(embeds, latents, mask).mask_logits[:, -1, -1]
            far_moved = rem(embeds, moved, mask).mask_logits[:, -1, -1]
        assert (not torch.allclose(far, far_moved)) == reaches
    assert not hasattr(_rem(image_text_layers=1).image_text_blocks[0], "self_attn")  # no new weights by default


def test_bad_shapes_are_refused():
    rem = _rem()
    embeds, latents, mask = _inputs()
    with pytest.raises(ValueError, match="prompt_embeds"):
        rem(embeds[..., :16], latents, mask)
    with pytest.raises(ValueError, match="image_latents"):
        rem(embeds, latents[:, :3], mask)
    with pytest.raises(ValueError, match="batch"):
        rem(embeds, latents[:1], mask)


def test_save_and_load_round_trip(tmp_path):
    rem = _rem(mlp_ratio=2.0)
    with torch.no_grad():
        rem.gate.normal_()
    rem.save_pretrained(tmp_path / "rem")
    back = RegionEmbedder.from_pretrained(tmp_path / "rem").eval()
    assert back.config.mlp_ratio == 2.0 and back.config.text_dim == D
    embeds, latents, mask = _inputs()
    with torch.no_grad():
        a, b = rem(embeds, latents, mask), back(embeds, latents, mask)
    assert torch.equal(a.condition, b.condition) and torch.equal(a.mask_logits, b.mask_logits)


def test_output_survives_accelerates_fp32_conversion_and_pytree():
    """accelerate's mixed-precision wrapper rebuilds outputs as `type(out)(dict)`; DDP flattens them as pytrees."""
    from accelerate.utils import convert_to_fp32
    from torch.utils import _pytree

    rem = _rem().to(torch.bfloat16)
    embeds, latents, mask = _inputs()
    out = rem(embeds.to(torch.bfloat16), latents, mask)
    converted = convert_to_fp32(out)
    assert type(converted) is type(out)
    for name in ("condition", "mask_logits", "edit_embedding", "referring_embedding", "vision_embedding",
                 "referring_feature"):
        value = getattr(converted, name)
        assert value.dtype == torch.float32
        assert torch.equal(value, getattr(out, name).float())
    leaves, spec = _pytree.tree_flatten(out)
    rebuilt = _pytree.tree_unflatten(leaves, spec)
    assert type(rebuilt) is type(out) and torch.equal(rebuilt.mask_logits, out.mask_logits)
