"""Model resolver, tiny random-weight models, the CLIP tokenizer and Paint-by-Example loading."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from refcoco_edit.errors import DataError, InputError, ModelNotAvailableError
from refcoco_edit.models import resolver as models

PROMPT = "replace the cow in the back with a panda"
PROMPT_IDS = [49406, 9466, 518, 9706, 530, 518, 893, 593, 320, 12952, 49407]


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch, tmp_path):
    """No user settings leak in: no REFCOCO_EDIT_MODEL_* variables, a config path that does not exist."""
    for var in list(os.environ):
        if var.startswith(models.ENV_PREFIX):
            monkeypatch.delenv(var)
    monkeypatch.setenv(models.CONFIG_ENV, str(tmp_path / "no-such-config.yaml"))


def write_config(tmp_path: Path, monkeypatch, text: str) -> Path:
    path = tmp_path / "conf" / "models.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv(models.CONFIG_ENV, str(path))
    return path


# ------------------------------------------------------------------------------------------
# resolution


def test_env_var_names():
    assert models.env_var("ip2p") == "REFCOCO_EDIT_MODEL_IP2P"
    assert models.env_var("clip-vit-l14") == "REFCOCO_EDIT_MODEL_CLIP_VIT_L14"


def test_names_and_defaults():
    names = models.model_names()
    for name in ("sd15", "ip2p", "magicbrush", "instructdiffusion", "paint-by-example", "sd-inpaint",
                 "clip-vit-l14", "aesthetic", "tiny-sd15", "tiny-ip2p", "tiny-sd-inpaint",
                 "tiny-paint-by-example", "tiny-clip", "tiny-aesthetic"):
        assert name in names
    r = models.resolve("ip2p")
    assert (r.source, r.origin, r.is_local) == ("timbrooks/instruct-pix2pix", "default", False)
    assert models.resolve("clip-vit-l14").source == "openai/clip-vit-large-patch14"


def test_resolution_order(tmp_path, monkeypatch):
    for d in ("from_config", "from_env", "from_flag"):
        (tmp_path / d).mkdir()
    conf = write_config(tmp_path, monkeypatch, f"ip2p: {tmp_path / 'from_config'}\n")
    r = models.resolve("ip2p")
    assert (r.source, r.origin, r.is_local) == (str(tmp_path / "from_config"), f"config:{conf}", True)

    monkeypatch.setenv("REFCOCO_EDIT_MODEL_IP2P", str(tmp_path / "from_env"))
    r = models.resolve("ip2p")
    assert (r.source, r.origin) == (str(tmp_path / "from_env"), "env:REFCOCO_EDIT_MODEL_IP2P")

    r = models.resolve("ip2p", {"ip2p": str(tmp_path / "from_flag")})
    assert (r.source, r.origin) == (str(tmp_path / "from_flag"), "override")
    # An override for another name does not change this one; other names keep their defaults.
    assert models.resolve("ip2p", {"sd15": "a/b"}).origin == "env:REFCOCO_EDIT_MODEL_IP2P"
    assert models.resolve("sd15").origin == "default"


def test_config_relative_paths_and_hub_ids(tmp_path, monkeypatch):
    write_config(tmp_path, monkeypatch, "sd15: ./weights/sd\nclip-vit-l14: someone/clip-finetune\n")
    (tmp_path / "conf" / "weights" / "sd").mkdir(parents=True)
    r = models.resolve("sd15")
    assert r.source == str(tmp_path / "conf" / "weights" / "sd") and r.is_local
    r = models.resolve("clip-vit-l14")
    assert (r.source, r.is_local) == ("someone/clip-finetune", False)


@pytest.mark.parametrize(
    "text, words",
    [
        ("ip2p: [unclosed\n", "cannot be read"),
        ("- ip2p\n- sd15\n", "must be a mapping"),
        ("ipp2p: /x\n", "unknown model name 'ipp2p'"),
        ("ip2p: 3\n", "must be a path or Hub id"),
        ("tiny-ip2p: /x\n", "built-in tiny model"),
    ],
)
def test_malformed_config(tmp_path, monkeypatch, text, words):
    path = write_config(tmp_path, monkeypatch, text)
    with pytest.raises(DataError) as err:
        models.resolve("ip2p")
    assert str(path) in str(err.value) and words in str(err.value)


def test_parse_model_overrides():
    got = models.parse_model_overrides(["ip2p=/m/ip2p", "clip-vit-l14 = org/clip", "ip2p=/m/other"])
    assert got == {"ip2p": "/m/other", "clip-vit-l14": "org/clip"}
    assert models.parse_model_overrides(None) == {}
    for bad in ("ip2p", "=x", "ip2p=", " = "):
        with pytest.raises(InputError, match="NAME=PATH_OR_HUB_ID"):
            models.parse_model_overrides([bad])
    with pytest.raises(InputError, match="unknown model name 'pix2pix'"):
        models.parse_model_overrides(["pix2pix=/x"])
    with pytest.raises(InputError, match="tiny"):
        models.parse_model_overrides(["tiny-ip2p=/x"])


def test_unknown_names():
    with pytest.raises(InputError, match="unknown model name 'sd14'"):
        models.resolve("sd14")
    with pytest.raises(InputError, match="unknown model name 'sd14'"):
        models.resolve("sd15", {"sd14": "/x"})


def test_missing_local_path_names_its_setting(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelNotAvailableError, match="--model flag") as err:
        models.resolve("sd15", {"sd15": str(missing)})
    assert str(missing) in str(err.value)
    monkeypatch.setenv("REFCOCO_EDIT_MODEL_SD15", str(missing))
    with pytest.raises(ModelNotAvailableError, match="REFCOCO_EDIT_MODEL_SD15"):
        models.resolve("sd15")
    monkeypatch.delenv("REFCOCO_EDIT_MODEL_SD15")
    conf = write_config(tmp_path, monkeypatch, "sd15: ./nowhere\n")
    with pytest.raises(ModelNotAvailableError) as err:
        models.resolve("sd15")
    assert str(conf) in str(err.value)
    # Not an owner/name Hub id either: a relative path with more parts must exist.
    with pytest.raises(ModelNotAvailableError):
        models.resolve("sd15", {"sd15": "a/b/c"})


def test_no_source_names_every_setting(tmp_path):
    with pytest.raises(ModelNotAvailableError) as err:
        models.resolve("instructdiffusion")
    msg = str(err.value)
    assert "REFCOCO_EDIT_MODEL_INSTRUCTDIFFUSION" in msg
    assert "--model instructdiffusion=" in msg
    assert str(tmp_path / "no-such-config.yaml") in msg
    listed = models.list_models(build=False)
    assert listed["aesthetic"].startswith("unavailable: ") and listed["ip2p"] == "timbrooks/instruct-pix2pix"


def test_hub_id_offline_fails_fast_without_calling_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    calls = []
    with pytest.raises(ModelNotAvailableError) as err:
        models.load_pretrained("ip2p", calls.append, {"ip2p": "nobody-xyz/does-not-exist"})
    assert calls == []
    msg = str(err.value)
    assert "nobody-xyz/does-not-exist" in msg and "HF_HUB_OFFLINE" in msg and "REFCOCO_EDIT_MODEL_IP2P" in msg


def test_hub_loader_error_becomes_model_not_available(tmp_path, monkeypatch):
    """A real diffusers loader on a Hub id that is not available (offline) -> ModelNotAvailableError."""
    from diffusers import UNet2DConditionModel

    hub = tmp_path / "hub"
    # Make the resolver's offline pre-check pass, so the library's own failure is what we convert.
    (hub / "models--nobody-xyz--does-not-exist" / "snapshots" / "0").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match="could not be loaded") as err:
        models.load_pretrained(
            "ip2p",
            lambda s: UNet2DConditionModel.from_pretrained(s, subfolder="unet", local_files_only=True),
            {"ip2p": "nobody-xyz/does-not-exist"},
        )
    assert isinstance(err.value.__cause__, OSError)
    assert "--model ip2p=" in str(err.value)
    assert time.monotonic() - start < 20  # no network retries (they take ~25 s)


def test_load_pretrained_local_errors(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()

    def broken(source: str):
        raise ValueError(f"bad config in {source}")

    with pytest.raises(ModelNotAvailableError, match="bad config") as err:
        models.load_pretrained("sd15", broken, {"sd15": str(folder)})
    assert "--model flag" in str(err.value)

    def buggy(source: str):
        raise TypeError("a bug, not a missing model")

    with pytest.raises(TypeError):
        models.load_pretrained("sd15", buggy, {"sd15": str(folder)})
    assert models.load_pretrained("sd15", lambda s: s, {"sd15": str(folder)}) == str(folder)


def test_cache_dir(monkeypatch, tmp_path):
    from refcoco_edit.settings import cache_dir

    monkeypatch.setenv("REFCOCO_EDIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    from refcoco_edit.models import tiny as tiny_models

    assert tiny_models.tiny_folder("tiny-clip") == tmp_path / "c" / "models" / f"tiny-clip-{tiny_models.TINY_VERSION}"
    monkeypatch.delenv("REFCOCO_EDIT_CACHE")
    assert cache_dir() == Path("~/.cache/refcoco-edit").expanduser()


# ------------------------------------------------------------------------------------------
# CLI


def test_cli_models(tiny_cache, tmp_path, capsys):
    from refcoco_edit.cli import main

    (tmp_path / "ip2p").mkdir()
    assert main(["models", "--model", f"ip2p={tmp_path / 'ip2p'}"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("ip2p "))
    assert line.split()[1:] == ["override", str(tmp_path / "ip2p")]
    assert "unavailable" in next(ln for ln in out.splitlines() if ln.startswith("aesthetic "))

    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sd15"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert Path(data["tiny-clip"]).is_dir() and Path(data["tiny-clip"]).parent.parent == tiny_cache

    assert main(["models", "--model", "nonsense"]) == 2
    assert "NAME=PATH_OR_HUB_ID" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# tokenizer


def _openai_tokenizer():
    """clip-anytorch's own tokenizer module (loaded without running clip/__init__)."""
    folder = Path(importlib.util.find_spec("clip").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("_clip_simple_tokenizer", folder / "simple_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def test_tokenizer_matches_openai_clip():
    from refcoco_edit.models.tiny import build_clip_tokenizer

    tok = build_clip_tokenizer()
    assert tok(PROMPT).input_ids == PROMPT_IDS
    assert len(tok) == 49408 and tok.pad_token_id == 49407 and tok.model_max_length == 77
    reference = _openai_tokenizer()
    for text in (PROMPT, "The man's red-and-white café umbrella, 2nd from left!!", "zebra   on\tthe LEFT"):
        assert tok(text).input_ids == [49406, *reference.encode(text), 49407]
    padded = tok(PROMPT, padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[len(PROMPT_IDS):] == [49407] * (77 - len(PROMPT_IDS))


def test_tokenizer_without_clip_anytorch(monkeypatch):
    from refcoco_edit.models import tiny as tiny_models

    monkeypatch.setattr(tiny_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps clip-anytorch"):
        tiny_models.clip_bpe_path()


# ------------------------------------------------------------------------------------------
# tiny models


def _images():
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    example = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    return image, Image.fromarray(mask), example


def _run(pipe, name: str, seed: int = 0) -> np.ndarray:
    import torch

    image, mask, example = _images()
    common = {"num_inference_steps": 2, "output_type": "np", "generator": torch.Generator().manual_seed(seed)}
    if name == "tiny-sd15":
        out = pipe(PROMPT, height=64, width=64, **common)
    elif name == "tiny-ip2p":
        out = pipe(PROMPT, image=image, **common)
    elif name == "tiny-sd-inpaint":
        out = pipe(PROMPT, image=image, mask_image=mask, height=64, width=64, **common)
    else:
        out = pipe(image=image, mask_image=mask, example_image=example, height=64, width=64, **common)
    return out.images


def _load_pipeline(name: str):
    import diffusers

    from refcoco_edit.models.pbe_loading import load_paint_by_example

    loader = {
        "tiny-sd15": diffusers.StableDiffusionPipeline.from_pretrained,
        "tiny-ip2p": diffusers.StableDiffusionInstructPix2PixPipeline.from_pretrained,
        "tiny-sd-inpaint": diffusers.StableDiffusionInpaintPipeline.from_pretrained,
        "tiny-paint-by-example": load_paint_by_example,
    }[name]
    pipe = models.load_pretrained(name, loader)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "name, in_channels",
    [("tiny-sd15", 4), ("tiny-ip2p", 8), ("tiny-sd-inpaint", 9), ("tiny-paint-by-example", 9)],
)
def test_tiny_pipelines_load_and_run(tiny_cache, name, in_channels):
    pipe = _load_pipeline(name)
    assert pipe.unet.config.in_channels == in_channels
    assert pipe.vae_scale_factor == 8
    sched = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end, sched.num_train_timesteps) == (
        "scaled_linear", 0.00085, 0.012, 1000)
    assert (sched.clip_sample, sched.set_alpha_to_one, sched.steps_offset) == (False, False, 1)
    if name != "tiny-paint-by-example":
        assert pipe.tokenizer(PROMPT).input_ids == PROMPT_IDS
        assert pipe.safety_checker is None
    images = _run(pipe, name)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_paint_by_example_round_trip(tiny_cache, tmp_path):
    """In-memory pipeline -> save -> our loader gives identical outputs, for our fixed-up folder, for
    diffusers' own (unloadable as such) save, and for the Hub-style index."""
    from refcoco_edit.models import tiny as tiny_models
    from refcoco_edit.models.pbe_loading import ENCODER_ENTRY, load_paint_by_example

    built = tiny_models.make_tiny_pipeline("tiny-paint-by-example")
    built.set_progress_bar_config(disable=True)
    expected = _run(built, "tiny-paint-by-example", seed=3)

    folder = models.resolve("tiny-paint-by-example").source
    assert json.loads((Path(folder) / "model_index.json").read_text())["image_encoder"] == ENCODER_ENTRY
    raw = tmp_path / "raw"
    built.save_pretrained(raw)  # model_index.json names ["diffusers", "PaintByExampleImageEncoder"]
    for source in (folder, raw):
        loaded = load_paint_by_example(source)
        loaded.set_progress_bar_config(disable=True)
        np.testing.assert_array_equal(_run(loaded, "tiny-paint-by-example", seed=3), expected)
    assert json.loads((raw / "model_index.json").read_text())["image_encoder"][0] == "diffusers"  # untouched


def test_paint_by_example_missing_hub_id():
    from refcoco_edit.models.pbe_loading import load_paint_by_example

    with pytest.raises(OSError):
        load_paint_by_example("nobody-xyz/no-such-pbe", local_files_only=True)
    with pytest.raises(OSError):
        load_paint_by_example("/no/such/folder")


def test_tiny_clip(tiny_cache):
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = models.resolve("tiny-clip").source
    model = models.load_pretrained("tiny-clip", CLIPModel.from_pretrained)
    processor = CLIPProcessor.from_pretrained(folder)
    assert CLIPTokenizer.from_pretrained(folder)(PROMPT).input_ids == PROMPT_IDS
    inputs = processor(text=[PROMPT, "a cow"], images=[Image.new("RGB", (50, 70))], return_tensors="pt",
                       padding=True)
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    with torch.no_grad():
        out = model(**inputs)
    assert out.image_embeds.shape == (1, 32) and out.text_embeds.shape == (2, 32)
    assert out.logits_per_image.shape == (1, 2)


def test_tiny_aesthetic_head(tiny_cache):
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPModel

    from refcoco_edit.models.tiny import AESTHETIC_HIDDEN

    folder = Path(models.resolve("tiny-aesthetic").source)
    config = json.loads((folder / "config.json").read_text())
    clip = CLIPModel.from_pretrained(models.resolve("tiny-clip").source)
    assert config["input_size"] == clip.config.projection_dim
    state = load_file(folder / "model.safetensors")
    widths = [config["input_size"], *AESTHETIC_HIDDEN, 1]
    for i, idx in enumerate((0, 2, 4, 6, 7)):
        assert state[f"layers.{idx}.weight"].shape == (widths[i + 1], widths[i])
        assert state[f"layers.{idx}.bias"].shape == (widths[i + 1],)
    # The real predictor's layout: Linear/Dropout x3, Linear, Linear.
    head = torch.nn.Sequential(
        torch.nn.Linear(widths[0], 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
    )
    head.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
    with torch.no_grad():
        emb = clip.get_image_features(pixel_values=torch.zeros(2, 3, 32, 32))
        emb = getattr(emb, "pooler_output", emb)
        score = head.eval()(emb / emb.norm(dim=-1, keepdim=True))
    assert score.shape == (2, 1)


def test_materialize_is_deterministic(tmp_path):
    from refcoco_edit.models.tiny import materialize

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    for name in ("tiny-sd15", "tiny-paint-by-example"):
        a = files(materialize(name, tmp_path / "a"))
        b = files(materialize(name, tmp_path / "b"))
        assert any(k.endswith(".safetensors") for k in a)
        assert a == b, name


def test_materialize_locking_and_cleanup(tmp_path, monkeypatch):
    """Concurrent requests build once; a failed build leaves nothing behind."""
    from refcoco_edit.models import tiny as tiny_models

    calls = []

    def slow_builder(out: Path) -> None:
        calls.append(threading.get_ident())
        time.sleep(0.3)
        (out / "weights.bin").write_bytes(b"x")

    monkeypatch.setitem(tiny_models.BUILDERS, "tiny-aesthetic", slow_builder)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(tiny_models.materialize("tiny-aesthetic", tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and (results[0] / "weights.bin").is_file()

    def failing(out: Path) -> None:
        (out / "half").write_bytes(b"")
        raise RuntimeError("boom")

    monkeypatch.setitem(tiny_models.BUILDERS, "tiny-clip", failing)
    stale = tmp_path / "models" / f".tiny-clip-{tiny_models.TINY_VERSION}.tmp-killed"  # from a killed build
    stale.mkdir()
    with pytest.raises(RuntimeError):
        tiny_models.materialize("tiny-clip", tmp_path)
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [results[0].name]


def test_materialized_model_returns_without_torch(tiny_cache):
    models.resolve("tiny-aesthetic")  # built (once) in the shared test cache
    code = (
        "import sys; from refcoco_edit.models.resolver import resolve; "
        "print(resolve('tiny-aesthetic').source); print('torch' in sys.modules)"
    )
    env = {**os.environ, "REFCOCO_EDIT_CACHE": str(tiny_cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    source, torch_loaded = out.stdout.split()
    assert Path(source).is_dir() and torch_loaded == "False"


def test_building_a_tiny_model_leaves_the_global_torch_rng_alone(tmp_path):
    torch = pytest.importorskip("torch")
    from refcoco_edit.models.tiny import materialize

    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    materialize("tiny-aesthetic", tmp_path)  # its builder seeds torch for its own weights
    assert torch.equal(torch.rand(3), expected)


def test_shipped_refshapes_models_resolve_to_the_package_folder(tmp_path, monkeypatch):
    from refcoco_edit.errors import ModelNotAvailableError
    from refcoco_edit.models import resolver

    monkeypatch.setattr(resolver, "PACKAGED_MODELS", tmp_path)
    monkeypatch.delenv("REFCOCO_EDIT_MODEL_REFSHAPES_VAE", raising=False)
    monkeypatch.setenv("REFCOCO_EDIT_CONFIG", str(tmp_path / "none.yaml"))
    with pytest.raises(ModelNotAvailableError, match=r"refshapes-vae.*not shipped.*docs/refshapes.md"):
        resolver.resolve("refshapes-vae")
    (tmp_path / "refshapes-vae").mkdir()
    got = resolver.resolve("refshapes-vae")
    assert (got.source, got.origin) == (str(tmp_path / "refshapes-vae"), "packaged")
    other = tmp_path / "mine"
    other.mkdir()
    assert resolver.resolve("refshapes-vae", {"refshapes-vae": str(other)}).source == str(other)  # override wins
