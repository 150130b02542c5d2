"""`rie-bench convert --from ldm`: a tiny InstructPix2Pix pipeline written out in the original
latent-diffusion layout by an inverse key mapping written here (not diffusers'), converted back, must
give the original pipeline's images; EMA weights are preferred; other checkpoints are refused with a
message naming the problem; the built-in architecture is Stable Diffusion 1.5's.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from refcoco_edit.errors import InputError
from tests.torch_threads import one_torch_thread

one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)

STEPS = 2


# --------------------------------------------------------------------------------------------
# diffusers -> LDM names, from the layout of the original UNet / autoencoder / text encoder code


def _ldm_resnet(rest: str) -> str:
    """ResBlock parameter names: in_layers (norm, SiLU, conv), emb_layers (SiLU, linear), out_layers
    (norm, SiLU, dropout, conv), skip_connection."""
    names = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
             "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    head, _, tail = rest.partition(".")
    return f"{names[head]}.{tail}"


def unet_to_ldm(state: dict, layers: int, has_attention: list[bool]) -> dict:
    """UNet2DConditionModel keys -> `model.diffusion_model.*`: input_blocks are conv_in then, per level,
    `layers` (resnet[, attention]) entries and a downsampler (not after the last level); output_blocks
    are `layers + 1` entries per level, the upsampler inside the level's last entry."""
    levels = len(has_attention)
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "conv_in":
            new = f"input_blocks.0.0.{parts[1]}"
        elif parts[0] == "time_embedding":
            new = f"time_embed.{ {'linear_1': 0, 'linear_2': 2}[parts[1]] }.{parts[2]}"
        elif parts[0] == "conv_norm_out":
            new = f"out.0.{parts[1]}"
        elif parts[0] == "conv_out":
            new = f"out.2.{parts[1]}"
        elif parts[0] == "down_blocks":
            level, kind = int(parts[1]), parts[2]
            rest = ".".join(parts[4:])
            if kind == "downsamplers":
                new = f"input_blocks.{1 + level * (layers + 1) + layers}.0.op.{'.'.join(parts[5:])}"
            else:
                index = 1 + level * (layers + 1) + int(parts[3])
                new = (f"input_blocks.{index}.0.{_ldm_resnet(rest)}" if kind == "resnets"
                       else f"input_blocks.{index}.1.{rest}")
        elif parts[0] == "mid_block":  # mid_block.resnets.0 / attentions.0 / resnets.1
            rest = ".".join(parts[3:])
            if parts[1] == "resnets":
                new = f"middle_block.{2 * int(parts[2])}.{_ldm_resnet(rest)}"
            else:
                new = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            level, kind = int(parts[1]), parts[2]
            rest = ".".join(parts[4:])
            if kind == "upsamplers":
                slot = 2 if has_attention[levels - 1 - level] else 1
                new = f"output_blocks.{level * (layers + 1) + layers}.{slot}.conv.{'.'.join(parts[5:])}"
            else:
                index = level * (layers + 1) + int(parts[3])
                new = (f"output_blocks.{index}.0.{_ldm_resnet(rest)}" if kind == "resnets"
                       else f"output_blocks.{index}.1.{rest}")
        else:
            raise AssertionError(f"unmapped UNet key {key}")
        out[f"model.diffusion_model.{new}"] = value
    return out


def vae_to_ldm(state: dict, levels: int) -> dict:
    """AutoencoderKL keys -> `first_stage_model.*` (encoder.down.i.block.j, decoder.up counted from the
    bottom, mid.block_1/attn_1/block_2, attention projections as 1x1 convolutions)."""
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        side = parts[0]
        if side in ("quant_conv", "post_quant_conv"):
            new = key
        elif parts[1] in ("conv_in", "conv_out"):
            new = key
        elif parts[1] == "conv_norm_out":
            new = f"{side}.norm_out.{parts[2]}"
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
            else:
                name = attn[parts[4]]
                new = f"{side}.mid.attn_1.{name}.{parts[-1]}"
                if name != "norm" and value.ndim == 2:
                    value = value[:, :, None, None]
        elif parts[1] in ("down_blocks", "up_blocks"):
            level = int(parts[2])
            where = "down" if parts[1] == "down_blocks" else "up"
            if where == "up":
                level = levels - 1 - level
            if parts[3] == "resnets":
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{side}.{where}.{level}.block.{parts[4]}.{rest}"
            else:
                sample = "downsample" if where == "down" else "upsample"
                new = f"{side}.{where}.{level}.{sample}.conv.{parts[-1]}"
        else:
            raise AssertionError(f"unmapped VAE key {key}")
        out[f"first_stage_model.{new}"] = value
    return out


def text_to_ldm(state: dict) -> dict:
    """CLIPTextModel keys -> `cond_stage_model.transformer.text_model.*` (the original wraps the HF model)."""
    out = {}
    for key, value in state.items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        out[f"cond_stage_model.transformer.{key}"] = value
    return out


def ldm_state(pipe, *, ema_noise: float | None = None, seed: int = 0) -> dict:
    """The whole LDM-format state dict of `pipe`. With `ema_noise`, the true UNet weights go under
    `model_ema.` (the LitEma naming: the module path with its dots removed) and the raw UNet weights
    are the true ones plus that much noise, as after training with EMA."""
    import torch

    unet_cfg = pipe.unet.config
    has_attention = ["CrossAttn" in t for t in unet_cfg.down_block_types]
    unet = unet_to_ldm(pipe.unet.state_dict(), unet_cfg.layers_per_block, has_attention)
    state = {**unet, **vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels)),
             **text_to_ldm(pipe.text_encoder.state_dict())}
    if ema_noise is not None:
        gen = torch.Generator().manual_seed(seed)
        for key, value in unet.items():
            state["model_ema." + key[len("model."):].replace(".", "")] = value
            if value.is_floating_point():
                state[key] = value + ema_noise * torch.randn(value.shape, generator=gen)
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tiny_ip2p(tiny_cache):
    from refcoco_edit.models.resolver import resolve
    from refcoco_edit.models.tiny import make_tiny_pipeline

    folder = resolve("tiny-ip2p").source
    pipe = make_tiny_pipeline("tiny-ip2p")
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


def _image() -> Image.Image:
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    rgb = np.dstack([127 + 100 * np.sin(xx / 7), 127 + 100 * np.cos(yy / 9), np.full_like(xx, 90)])
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _edit(pipe) -> np.ndarray:
    import torch

    pipe.set_progress_bar_config(disable=True)
    return pipe("make the sky green", image=_image(), num_inference_steps=STEPS, guidance_scale=7.5,
                image_guidance_scale=1.5, generator=torch.Generator().manual_seed(5), output_type="np").images[0]


def _save_safetensors(state: dict, path) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path))


# --------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_converted_ldm_checkpoint_gives_the_original_images(tiny_ip2p, tmp_path, fmt):
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from benchmark.convert import convert_ldm

    folder, original = tiny_ip2p
    state = ldm_state(original, ema_noise=0.05)
    path = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        _save_safetensors(state, path)
    else:  # Lightning's layout: the weights under "state_dict", beside plain training counters
        torch.save({"state_dict": state, "global_step": 4999, "epoch": 52}, path)
    report = convert_ldm(path, tmp_path / "out", config=folder)
    assert report.ema is True and report.dtype == "float32"
    converted = StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path / "out", safety_checker=None)
    assert converted.unet.config.in_channels == 8
    np.testing.assert_allclose(_edit(converted), _edit(original), atol=1e-5)
    # the converted scheduler is the config folder's; the weights are the EMA ones (the raw ones are noisy)
    ref = original.unet.state_dict()
    got = converted.unet.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_no_ema_takes_the_raw_weights(tiny_ip2p, tmp_path):
    import torch
    from diffusers import UNet2DConditionModel

    from benchmark.convert import convert_ldm

    folder, original = tiny_ip2p
    state = ldm_state(original, ema_noise=0.05)
    _save_safetensors(state, tmp_path / "m.safetensors")
    report = convert_ldm(tmp_path / "m.safetensors", tmp_path / "out", config=folder, ema=False)
    assert report.ema is False
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "out", subfolder="unet")
    raw = state["model.diffusion_model.input_blocks.0.0.weight"]
    assert torch.equal(unet.conv_in.weight, raw)
    assert not torch.equal(unet.conv_in.weight, original.unet.conv_in.weight)


def test_dtype_is_one_for_every_component(tiny_ip2p, tmp_path):
    from benchmark.convert import convert_ldm
    from tests.fixtures_real_layout import saved_dtypes

    folder, original = tiny_ip2p
    state = ldm_state(original)
    state = {k: (v.half() if k.startswith("first_stage_model.") else v) for k, v in state.items()}  # a mixed file
    _save_safetensors(state, tmp_path / "m.safetensors")
    convert_ldm(tmp_path / "m.safetensors", tmp_path / "fp16", config=folder, dtype="float16")
    assert set().union(*saved_dtypes(tmp_path / "fp16").values()) == {"F16"}
    convert_ldm(tmp_path / "m.safetensors", tmp_path / "fp32", config=folder)
    assert set().union(*saved_dtypes(tmp_path / "fp32").values()) == {"F32"}


def test_other_checkpoints_are_refused_with_the_reason(tiny_ip2p, tmp_path):
    import torch

    from benchmark.convert import convert_ldm
    from refcoco_edit.models.tiny import make_tiny_pipeline

    folder, _ = tiny_ip2p
    _save_safetensors(ldm_state(make_tiny_pipeline("tiny-sd15")), tmp_path / "sd.safetensors")
    with pytest.raises(InputError, match="takes 4 input channels"):
        convert_ldm(tmp_path / "sd.safetensors", tmp_path / "o1", config=folder)
    _save_safetensors({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="not an LDM checkpoint"):
        convert_ldm(tmp_path / "other.safetensors", tmp_path / "o2", config=folder)
    torch.save({"state_dict": {}, "callback": Image.new("RGB", (1, 1))}, tmp_path / "objects.ckpt")
    with pytest.raises(InputError, match="weights-only"):
        convert_ldm(tmp_path / "objects.ckpt", tmp_path / "o3", config=folder)
    with pytest.raises(InputError, match="does not exist"):
        convert_ldm(tmp_path / "missing.ckpt", tmp_path / "o4")
    (tmp_path / "o5").mkdir()
    (tmp_path / "o5" / "x").write_text("keep")
    with pytest.raises(InputError, match="not empty"):
        convert_ldm(tmp_path / "sd.safetensors", tmp_path / "o5")
    assert not (tmp_path / "o1").exists()


def test_cli_converts_and_the_ip2p_method_runs_on_the_result(tiny_ip2p, tmp_path, capsys):
    from benchmark.cli import main
    from benchmark.methods import create_method

    folder, original = tiny_ip2p
    _save_safetensors(ldm_state(original), tmp_path / "m.safetensors")
    out = tmp_path / "converted"
    assert main(["convert", "--from", "ldm", str(tmp_path / "m.safetensors"), "--out", str(out),
                 "--config", str(folder)]) == 0
    assert str(out) in capsys.readouterr().out
    method = create_method("magicbrush", model=str(out), device="cpu", steps=STEPS, size=64)
    method.ensure_ready()

    class Sample:
        source_image = _image()
        prompt = "make the sky green"

    assert method.edit(Sample(), seed=1).image.size == (64, 64)
    assert method.config()["model_folder"] == str(out.resolve())
    assert main(["convert", "--from", "ldm", str(tmp_path / "m.safetensors"), "--out", str(out)]) == 2  # not empty


def test_builtin_architecture_is_stable_diffusion_15():
    """Parameter counts of SD 1.5's UNet (+ the 4 extra input channels of InstructPix2Pix), VAE and
    CLIP ViT-L/14 text tower, on the meta device (no weights)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from benchmark.convert import SD15_IP2P

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(SD15_IP2P["unet/config.json"])
        vae = AutoencoderKL.from_config(SD15_IP2P["vae/config.json"])
        text = {k: v for k, v in SD15_IP2P["text_encoder/config.json"].items() if k not in ("architectures",
                                                                                           "model_type")}
        encoder = CLIPTextModel(CLIPTextConfig(**text))

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(unet) == 859_520_964 + 4 * 320 * 3 * 3
    assert count(vae) == 83_653_863
    assert count(encoder) == 123_060_480
    scheduler = EulerAncestralDiscreteScheduler.from_config(SD15_IP2P["scheduler/scheduler_config.json"])
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.steps_offset == 1
