"""One resolver for every model the toolkit loads.

A model is asked for by name (`ip2p`, `clip-vit-l14`, `tiny-sd15`, ...). The name resolves to a local
folder or file, or to a Hugging Face Hub id, in this order:

1. an explicit override from the caller: the CLI flag `--model NAME=PATH_OR_HUB_ID` (repeatable; see
   `parse_model_overrides` and `add_model_argument`);
2. the environment variable `REFCOCO_EDIT_MODEL_<NAME>`, NAME upper-cased with '-' as '_'
   (`REFCOCO_EDIT_MODEL_IP2P`, `REFCOCO_EDIT_MODEL_CLIP_VIT_L14`);
3. the YAML file `$REFCOCO_EDIT_CONFIG`, or else `~/.config/refcoco-edit/models.yaml`: a mapping
   `name: path-or-hub-id` (relative paths are relative to the file's folder);
4. the built-in default: a Hub id, or for the models trained here on RefShapes (`refshapes-*`) the
   folder shipped in the package (`refcoco_edit/data/models/<name>`).

`tiny-*` names skip all of that: they always resolve to a folder in `cache_dir()` holding a
deterministic random-weight model with the real architecture, built on first use (`tiny_models`).

A value is a local path when it exists, is absolute, or starts with '.', '~'; it is a Hub id when it has
the form `owner/name` and no such path exists. A local path that does not exist is an error naming
where the value came from. Nothing here substitutes random weights for a model the user has not
provided: a name without a source, or a source that cannot be loaded, raises `ModelNotAvailableError`
naming the setting to set. With `HF_HUB_OFFLINE=1`, a Hub id missing from the local Hub cache fails at
once instead of after the libraries' network retries.

Only the standard library is imported at module level: the CLI imports this at start-up.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from refcoco_edit.errors import DataError, InputError, ModelNotAvailableError
from refcoco_edit.settings import CONFIG_ENV, config_path

T = TypeVar("T")

ENV_PREFIX = "REFCOCO_EDIT_MODEL_"
MODEL_FLAG = "--model"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class ModelSpec:
    hub_id: str | None  # built-in default; None: the user must provide the model
    kind: str  # what the folder (or file) holds
    description: str
    shipped: bool = False  # the default is the folder of that name under PACKAGED_MODELS


# Small models trained here on RefShapes, shipped with the package (fp16 safetensors).
PACKAGED_MODELS = Path(__file__).resolve().parent.parent / "data" / "models"
STUDY_HINT = "it is made by the RefShapes study (docs/refshapes.md)"


MODEL_SPECS: dict[str, ModelSpec] = {
    "sd15": ModelSpec(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "diffusers StableDiffusionPipeline",
        "Stable Diffusion 1.5 text-to-image (Blended Latent Diffusion edits)",
    ),
    "ip2p": ModelSpec(
        "timbrooks/instruct-pix2pix",
        "diffusers StableDiffusionInstructPix2PixPipeline",
        "InstructPix2Pix instruction editing (ReferDiffusion's starting point)",
    ),
    "magicbrush": ModelSpec(
        "vinesmsuic/magicbrush-jul7",
        "diffusers StableDiffusionInstructPix2PixPipeline",
        "MagicBrush fine-tune of InstructPix2Pix",
    ),
    "instructdiffusion": ModelSpec(
        None,
        "diffusers StableDiffusionInstructPix2PixPipeline",
        "InstructDiffusion; no official diffusers-format Hub id: point at a converted folder",
    ),
    "paint-by-example": ModelSpec(
        "Fantasy-Studio/Paint-by-Example",
        "diffusers PaintByExamplePipeline",
        "Paint-by-Example exemplar inpainting (composition pipeline)",
    ),
    "sd-inpaint": ModelSpec(
        "stable-diffusion-v1-5/stable-diffusion-inpainting",
        "diffusers StableDiffusionInpaintPipeline",
        "Stable Diffusion 1.5 inpainting (removal pipeline)",
    ),
    "clip-vit-l14": ModelSpec(
        "openai/clip-vit-large-patch14",
        "transformers CLIPModel + CLIPProcessor",
        "CLIP ViT-L/14 (ranking, CLIP metrics, aesthetic features)",
    ),
    "aesthetic": ModelSpec(
        None,
        "aesthetic MLP head (.pth/.safetensors file, or a folder holding one)",
        "LAION improved aesthetic predictor head on CLIP ViT-L/14 embeddings",
    ),
    "referdiffusion": ModelSpec(
        None,
        "ReferDiffusionPipeline checkpoint folder",
        "ReferDiffusion (make one with `referdiffusion init` or `referdiffusion train`)",
    ),
    "refshapes-vae": ModelSpec(None, "diffusers AutoencoderKL", "VAE trained here on RefShapes (128x96)", True),
    "refshapes-ip2p": ModelSpec(
        None, "diffusers StableDiffusionInstructPix2PixPipeline",
        "InstructPix2Pix trained here from scratch on RefShapes (the study's fine-tune row)", True),
    "refshapes-rem": ModelSpec(
        None, "ReferDiffusionPipeline checkpoint folder", "RefShapes study row +REM", True),
    "refshapes-rem-rcl": ModelSpec(
        None, "ReferDiffusionPipeline checkpoint folder", "RefShapes study row +REM +RCL", True),
    "refshapes-referdiffusion": ModelSpec(
        None, "ReferDiffusionPipeline checkpoint folder",
        "ReferDiffusion trained here on RefShapes (the study's full row, with stage 1)", True),
    "tiny-sd15": ModelSpec(None, "diffusers StableDiffusionPipeline", "tiny random stand-in for sd15"),
    "tiny-ip2p": ModelSpec(
        None, "diffusers StableDiffusionInstructPix2PixPipeline", "tiny random stand-in for ip2p"
    ),
    "tiny-sd-inpaint": ModelSpec(
        None, "diffusers StableDiffusionInpaintPipeline", "tiny random stand-in for sd-inpaint"
    ),
    "tiny-paint-by-example": ModelSpec(
        None, "diffusers PaintByExamplePipeline", "tiny random stand-in for paint-by-example"
    ),
    "tiny-clip": ModelSpec(None, "transformers CLIPModel + CLIPProcessor", "tiny random stand-in for clip-vit-l14"),
    "tiny-aesthetic": ModelSpec(
        None,
        "aesthetic MLP head folder (model.safetensors + config.json)",
        "tiny random aesthetic head over tiny-clip embeddings",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    source: str  # absolute local path, or a Hub id
    origin: str  # "override" | "env:VAR" | "config:PATH" | "default" | "packaged" | "tiny"

    @property
    def is_local(self) -> bool:
        return os.path.isabs(self.source)


# --------------------------------------------------------------------------------------------
# settings


def model_names() -> list[str]:
    return list(MODEL_SPECS)


def is_tiny(name: str) -> bool:
    return name.startswith("tiny-")


def env_var(name: str) -> str:
    """`ip2p` -> `REFCOCO_EDIT_MODEL_IP2P`; `clip-vit-l14` -> `REFCOCO_EDIT_MODEL_CLIP_VIT_L14`."""
    return ENV_PREFIX + name.upper().replace("-", "_")


def _check_name(name: str, what: str) -> None:
    if name not in MODEL_SPECS:
        raise InputError(f"unknown model name {name!r} in {what}; known names: {', '.join(MODEL_SPECS)}")


def parse_model_overrides(items: Iterable[str] | None) -> dict[str, str]:
    """`["ip2p=/models/ip2p", "clip-vit-l14=openai/clip-vit-large-patch14"]` -> dict; the last wins."""
    overrides: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise InputError(f"{MODEL_FLAG} expects NAME=PATH_OR_HUB_ID, got {item!r}")
        _check_name(name, f"{MODEL_FLAG} {item}")
        if is_tiny(name):
            raise InputError(f"{name} is a built-in tiny model and cannot be overridden ({MODEL_FLAG} {item})")
        overrides[name] = value
    return overrides


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """The shared, repeatable `--model NAME=PATH_OR_HUB_ID` flag (parse its list with
    `parse_model_overrides`)."""
    parser.add_argument(
        MODEL_FLAG,
        dest="model_overrides",
        action="append",
        default=[],
        metavar="NAME=PATH_OR_HUB_ID",
        help="use this folder/file or Hub id for a model name (repeatable); see `refcoco-edit models`",
    )


def read_config(path: Path | None = None) -> dict[str, str]:
    """The model mapping of a YAML config file ({} when the file does not exist)."""
    path = path or config_path()
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"model config {path} cannot be read: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"model config {path} must be a mapping of model name to path or Hub id")
    config: dict[str, str] = {}
    for key, value in data.items():
        if key not in MODEL_SPECS:
            raise DataError(f"model config {path}: unknown model name {key!r}; known: {', '.join(MODEL_SPECS)}")
        if is_tiny(key):
            raise DataError(f"model config {path}: {key} is a built-in tiny model and cannot be set")
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"model config {path}: {key} must be a path or Hub id string, got {value!r}")
        config[key] = value.strip()
    return config


def how_to_set(name: str) -> str:
    """The settings a user can set to provide model `name`."""
    which = f"named by ${CONFIG_ENV}" if os.environ.get(CONFIG_ENV) else f"or the file ${CONFIG_ENV} names"
    return (
        f"set {env_var(name)}=PATH_OR_HUB_ID, pass {MODEL_FLAG} {name}=PATH_OR_HUB_ID, or add "
        f"'{name}: PATH_OR_HUB_ID' to {config_path()} ({which})"
    )


# --------------------------------------------------------------------------------------------
# resolution


def _describe(origin: str) -> str:
    if origin == "override":
        return f"the {MODEL_FLAG} flag"
    if origin.startswith("env:"):
        return f"environment variable {origin[4:]}"
    if origin.startswith("config:"):
        return f"config file {origin[7:]}"
    return origin


def _to_source(name: str, value: str, origin: str, base: Path | None = None) -> ResolvedModel:
    """Decide whether `value` is a local path (made absolute, must exist) or a Hub id."""
    expanded = Path(value).expanduser()
    if not expanded.is_absolute() and base is not None:
        expanded = base / expanded
    looks_local = value.startswith((".", "~", "/", os.sep)) or Path(value).is_absolute()
    if expanded.exists():  # the folder actually read: absolute, links resolved (what provenance records)
        return ResolvedModel(name, str(expanded.resolve()), origin)
    if not looks_local and _HUB_ID.match(value):
        return ResolvedModel(name, value, origin)
    raise ModelNotAvailableError(
        f"model {name!r}: path {expanded.absolute()} from {_describe(origin)} does not exist "
        f"(a Hub id looks like owner/name)"
    )


def resolve(name: str, overrides: Mapping[str, str] | None = None, *, build: bool = True) -> ResolvedModel:
    """Where to load model `name` from (override > env > config > default; tiny: the cache folder).

    Tiny models are built on the way unless `build` is False (then the folder may not exist yet).
    """
    _check_name(name, "the model request")
    overrides = dict(overrides or {})
    for key in overrides:
        _check_name(key, "the model overrides")
    if is_tiny(name):
        from refcoco_edit.models import tiny as tiny_models

        folder = tiny_models.materialize(name) if build else tiny_models.tiny_folder(name)
        return ResolvedModel(name, str(Path(folder).resolve()), "tiny")
    if overrides.get(name):
        return _to_source(name, overrides[name], "override")
    var = env_var(name)
    if os.environ.get(var, "").strip():
        return _to_source(name, os.environ[var].strip(), f"env:{var}")
    path = config_path()
    config = read_config(path)
    if name in config:
        return _to_source(name, config[name], f"config:{path}", base=path.parent)
    spec = MODEL_SPECS[name]
    if spec.shipped:
        folder = PACKAGED_MODELS / name
        if folder.is_dir():
            return ResolvedModel(name, str(folder), "packaged")
        raise ModelNotAvailableError(f"model {name!r} ({spec.description}) is not shipped in this copy "
                                     f"({folder} is missing): {STUDY_HINT}, or {how_to_set(name)}")
    if spec.hub_id:
        return ResolvedModel(name, spec.hub_id, "default")
    raise ModelNotAvailableError(f"model {name!r} ({spec.description}) has no default source: {how_to_set(name)}")


def model_folder(source: str) -> str:
    """Where weights named by a resolved `source` are read from, for provenance: a local path absolute
    with its links resolved; a Hub id's snapshot folder in the local Hub cache once it is there (its
    name is the commit), else the Hub id itself."""
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve())
    if _HUB_ID.match(source):
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model_index.json", "config.json"):
            try:
                hit = try_to_load_from_cache(source, filename, cache_dir=str(hub_cache_dir()))
            except ValueError:  # not a valid repo id after all
                break
            if isinstance(hit, str):
                return str(Path(hit).parent.resolve())
    return source


def list_models(overrides: Mapping[str, str] | None = None, *, build: bool = True) -> dict[str, str]:
    """name -> local folder/file or Hub id, or "unavailable: <reason>"."""
    out: dict[str, str] = {}
    for name in MODEL_SPECS:
        try:
            out[name] = resolve(name, overrides, build=build).source
        except ModelNotAvailableError as exc:
            out[name] = f"unavailable: {exc}"
    return out


# --------------------------------------------------------------------------------------------
# loading


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache, computed from the environment as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path("~/.cache").expanduser()) / "huggingface" / "hub"


def is_hub_cached(hub_id: str) -> bool:
    snapshots = hub_cache_dir() / f"models--{hub_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _is_unavailable(exc: BaseException) -> bool:
    """Errors from a missing, unreachable or unreadable model (not bugs in the caller)."""
    if isinstance(exc, (OSError, ValueError)):
        return True
    module = type(exc).__module__ or ""
    return module.split(".")[0] in {"huggingface_hub", "httpx", "httpx2", "requests", "urllib3"}


def load_pretrained(name: str, loader: Callable[[str], T], overrides: Mapping[str, str] | None = None) -> T:
    """`loader(source)` for the resolved model `name`; loading failures become ModelNotAvailableError.

    The loader is typically `SomeClass.from_pretrained` or a small lambda around it. A model that cannot
    be loaded is never replaced by random weights.
    """
    resolved = resolve(name, overrides)
    where = "built-in tiny model" if resolved.origin == "tiny" else _describe(resolved.origin)
    if not resolved.is_local and _offline() and not is_hub_cached(resolved.source):
        raise ModelNotAvailableError(
            f"model {name!r}: Hub id {resolved.source} (from {where}) is not in the local Hugging Face "
            f"cache {hub_cache_dir()} and HF_HUB_OFFLINE is set; download it where the Hub is reachable, "
            f"or {how_to_set(name)}"
        )
    try:
        return loader(resolved.source)
    except Exception as exc:
        if not _is_unavailable(exc):
            raise
        if resolved.origin == "tiny":
            advice = f"delete {resolved.source} to have it rebuilt"
        else:
            advice = how_to_set(name)
            if not resolved.is_local and not _offline():
                advice += " (HF_HUB_OFFLINE=1 makes a missing Hub model fail fast)"
        raise ModelNotAvailableError(
            f"model {name!r} could not be loaded from {resolved.source} (from {where}): "
            f"{type(exc).__name__}: {exc}; {advice}"
        ) from exc
