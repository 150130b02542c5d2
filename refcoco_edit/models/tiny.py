"""Deterministic tiny random-weight models with the real architectures.

No pretrained weight can be downloaded where this project is built and tested, yet the code that
loads and runs models must be exercised for real. Each `tiny-*` name is built here from a fixed
seed, written once with `save_pretrained` into the cache and read back by the callers with the real
classes' `from_pretrained`, exactly like a downloaded model.

Layout: `<root>/models/<name>-<TINY_VERSION>/`, where `root` defaults to
`refcoco_edit.settings.cache_dir()`. Building happens in a temporary folder next to the destination,
under a file lock, and ends with an atomic rename, so a folder that exists is complete and several
processes may ask for the same model at once. Bump `TINY_VERSION` whenever a builder changes, so
stale folders are never reused.

torch, diffusers and transformers are imported inside the functions: `materialize` on an already
built model returns without importing them.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refcoco_edit.errors import ModelNotAvailableError
from refcoco_edit.io import build_once
from refcoco_edit.models.pbe_loading import fix_model_index, paint_by_example_encoder_class
from refcoco_edit.settings import cache_dir

logger = logging.getLogger(__name__)

TINY_VERSION = "v1"

# Sizes shared by the builders (see ENVIRONMENT.md: ~1-2 s for 50 DDIM steps at 64x64 on CPU).
TEXT_HIDDEN = 32  # CLIP text width == UNet cross-attention width == Paint-by-Example projection
PROJECTION_DIM = 32  # tiny-clip's image/text embedding width (the aesthetic head's input width)
VISION_IMAGE_SIZE = 32
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_POSITIONS = 77
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407

# OpenAI CLIP's vocabulary: the first 48,894 merges of the BPE file (line 0 is a header).
_N_MERGES = 49152 - 256 - 2
AESTHETIC_HIDDEN = (1024, 128, 64, 16)

# One seed per component so that changing one component leaves the others' weights as they were.
_SEEDS = {"unet": 0, "vae": 1, "text_encoder": 2, "image_encoder": 3, "clip": 4, "aesthetic": 5}


# --------------------------------------------------------------------------------------------
# tokenizer


def clip_bpe_path() -> Path:
    """The BPE file clip-anytorch ships, found without importing `clip` (its __init__ breaks here)."""
    spec = importlib.util.find_spec("clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    raise ModelNotAvailableError(
        "the CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz from the clip-anytorch package) is missing; "
        "install it with `pip install --no-deps clip-anytorch` (without --no-deps it pulls torchvision "
        "and a CUDA torch)"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table: printable Latin-1 bytes map to themselves,
    the others to code points from 256 up. The insertion order (printable bytes first, then the rest)
    is the order of the first 256 vocabulary ids, so it must not be sorted."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's vocabulary (49,408 tokens) and merge list, built the way CLIP builds them:
    byte characters, the same with '</w>', each merge joined, then the two special tokens."""
    text = gzip.decompress((bpe_path or clip_bpe_path()).read_bytes()).decode("utf-8")
    merges = [tuple(line.split()) for line in text.split("\n")[1 : _N_MERGES + 1]]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE or any(len(m) != 2 for m in merges):
        raise ModelNotAvailableError(f"unexpected CLIP BPE file {bpe_path}: {len(vocab)} tokens")
    return vocab, merges  # type: ignore[return-value]


def build_clip_tokenizer():
    """A real transformers `CLIPTokenizer` with OpenAI's vocabulary; pads with <|endoftext|> as SD does."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        pad_token="<|endoftext|>",
        model_max_length=CLIP_MAX_POSITIONS,
    )


# --------------------------------------------------------------------------------------------
# components


def _seeded(component: str) -> None:
    import torch

    torch.manual_seed(_SEEDS[component])


def _text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_POSITIONS,
        projection_dim=PROJECTION_DIM,
        hidden_act="quick_gelu",
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=EOS_TOKEN_ID,
    )


def _vision_config(num_hidden_layers: int = 2):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=VISION_IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        projection_dim=PROJECTION_DIM,
        hidden_act="quick_gelu",
    )


def _image_processor():
    """CLIP's preprocessing (resize, centre crop, CLIP mean/std) at the tiny vision size."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": VISION_IMAGE_SIZE},
        crop_size={"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE},
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        do_convert_rgb=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def _unet(in_channels: int):
    from diffusers import UNet2DConditionModel

    _seeded("unet")
    return UNet2DConditionModel(
        sample_size=8,  # x VAE factor 8 = 64 px default image size
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _vae():
    from diffusers import AutoencoderKL

    _seeded("vae")
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),  # 4 blocks: scale factor 8 like SD's VAE
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def _text_encoder():
    from transformers import CLIPTextModel

    _seeded("text_encoder")
    return CLIPTextModel(_text_config())


def _scheduler():
    """DDIM with Stable Diffusion 1.5's noise schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )




# --------------------------------------------------------------------------------------------
# builders: each writes one complete folder


def _sd_components(in_channels: int) -> dict[str, Any]:
    return {
        "vae": _vae(),
        "text_encoder": _text_encoder(),
        "tokenizer": build_clip_tokenizer(),
        "unet": _unet(in_channels),
        "scheduler": _scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def _make_sd15():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**_sd_components(4))


def _make_ip2p():
    from diffusers import StableDiffusionInstructPix2PixPipeline

    # 8 input channels: the noisy latent and the source image's latent.
    return StableDiffusionInstructPix2PixPipeline(**_sd_components(8))


def _make_sd_inpaint():
    from diffusers import StableDiffusionInpaintPipeline

    # 9 input channels: noisy latent, mask, masked image latent.
    return StableDiffusionInpaintPipeline(**_sd_components(9))


def _make_paint_by_example():
    from diffusers import PaintByExamplePipeline

    encoder_cls = paint_by_example_encoder_class()
    _seeded("image_encoder")
    # 4 vision layers so that the encoder's mapper has one transformer block ((layers + 1) // 5).
    encoder = encoder_cls(_vision_config(num_hidden_layers=4), proj_size=TEXT_HIDDEN)
    return PaintByExamplePipeline(
        vae=_vae(),
        image_encoder=encoder,
        unet=_unet(9),
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=_image_processor(),
        requires_safety_checker=False,
    )


PIPELINE_MAKERS: dict[str, Callable[[], Any]] = {
    "tiny-sd15": _make_sd15,
    "tiny-ip2p": _make_ip2p,
    "tiny-sd-inpaint": _make_sd_inpaint,
    "tiny-paint-by-example": _make_paint_by_example,
}


def make_tiny_pipeline(name: str):
    """The in-memory pipeline that `materialize(name)` saves (for tests of save/load round trips),
    in eval mode as `from_pretrained` returns it (train mode changes results by ~1e-6)."""
    import torch

    pipe = PIPELINE_MAKERS[name]()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def _save_pipeline(name: str) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        make_tiny_pipeline(name).save_pretrained(out)
        if name == "tiny-paint-by-example":
            fix_model_index(out)

    return build


def _build_clip(out: Path) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    _seeded("clip")
    config = CLIPConfig(
        text_config=_text_config().to_dict(),
        vision_config=_vision_config().to_dict(),
        projection_dim=PROJECTION_DIM,
    )
    CLIPModel(config).save_pretrained(out)
    processor = CLIPProcessor(image_processor=_image_processor(), tokenizer=build_clip_tokenizer())
    processor.save_pretrained(out)
    # preprocessor_config.json as well, like openai/clip-vit-large-patch14 has.
    processor.image_processor.save_pretrained(out)


def _build_aesthetic(out: Path) -> None:
    """LAION's improved aesthetic predictor head (Linear/Dropout stack, same parameter names as the
    released .pth: layers.0, .2, .4, .6, .7) with input width = tiny-clip's projection dim."""
    import torch
    from safetensors.torch import save_file

    _seeded("aesthetic")
    widths = (PROJECTION_DIM, *AESTHETIC_HIDDEN, 1)
    layer_index = (0, 2, 4, 6, 7)  # Dropout layers sit at 1, 3, 5
    state: dict[str, torch.Tensor] = {}
    for idx, (n_in, n_out) in zip(layer_index, zip(widths[:-1], widths[1:])):
        layer = torch.nn.Linear(n_in, n_out)
        state[f"layers.{idx}.weight"] = layer.weight.detach().contiguous()
        state[f"layers.{idx}.bias"] = layer.bias.detach().contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architecture": "laion-improved-aesthetic-predictor",
        "input_size": PROJECTION_DIM,
        "hidden_sizes": list(AESTHETIC_HIDDEN),
        "layer_indices": list(layer_index),
        "clip_model": "tiny-clip",
        "normalize_embeddings": True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


BUILDERS: dict[str, Callable[[Path], None]] = {
    **{name: _save_pipeline(name) for name in PIPELINE_MAKERS},
    "tiny-clip": _build_clip,
    "tiny-aesthetic": _build_aesthetic,
}


# --------------------------------------------------------------------------------------------
# materialising


def tiny_names() -> list[str]:
    return list(BUILDERS)


def tiny_folder(name: str, root: Path | None = None) -> Path:
    """Where `name` lives (built or not): `<root>/models/<name>-<TINY_VERSION>`."""
    if name not in BUILDERS:
        raise KeyError(name)
    if root is None:
        root = cache_dir()
    return Path(root) / "models" / f"{name}-{TINY_VERSION}"


def materialize(name: str, root: Path | None = None) -> Path:
    """Build the tiny model `name` once (under a file lock) and return its folder."""
    if name not in BUILDERS:
        from refcoco_edit.errors import InputError

        raise InputError(f"unknown tiny model {name!r}; known: {', '.join(BUILDERS)}")
    dest = tiny_folder(name, root)

    def make(tmp: Path) -> None:
        logger.info("building tiny model %s in %s", name, dest)
        _build_quietly(BUILDERS[name], tmp)

    return build_once(dest, make)


def _build_quietly(builder: Callable[[Path], None], out: Path) -> None:
    """Run a builder with the libraries' progress bars and info chatter turned down, and the caller's
    global torch RNG left as it was (the builders seed it: a first use must not change what a seeded
    program draws next)."""
    import torch

    from refcoco_edit.models.components import quiet_libraries

    with quiet_libraries(), torch.random.fork_rng(devices=[]):
        builder(out)
