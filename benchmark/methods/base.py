"""The method contract, its options, and the registry of method names.

A method turns one RefCOCO-Edit `Sample` into an edited image. It reads only the fields it declares
in `reads` (the instruction methods read the source image and the prompt; oracle baselines read
more, e.g. `blended` reads the ground-truth mask), so that a leaderboard can say which methods had
help. The runner calls, in this order:

    method = create_method("ip2p", model="tiny-ip2p", steps=2, size=64)
    method.availability()        # None, or why the weights cannot be had (loads nothing)
    method.setup()               # loads the weights (once)
    method.edit(sample, seed=s)  # a PIL image, or an EditResult(image, info)

`edit` returns the image at any size; the runner saves it as is and the metrics resize it to the
source's size (bicubic), as MagicBrush's evaluation does. The methods here return it at the source's
size already.

Registry: `METHODS` (a `refcoco_edit.registry.Registry`) maps a name to "module:Class"; modules are
imported only when a method is asked for, so `rie-bench list` and `--help` stay light.
`register_method(name, target)` adds one, and `get_method_class` also accepts a "module:Class" path
directly (`rie-bench run --method mypkg.mymethod:MyMethod`).

Only the standard library and refcoco_edit's errors and registry are imported here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from refcoco_edit.errors import InputError, ModelNotAvailableError
from refcoco_edit.registry import Registry

logger = logging.getLogger(__name__)

# The paper's instruction suffix for the instruction-following baselines (ip2p, magicbrush, instructdiffusion).
INSTRUCTION_SUFFIX = " and do not change any pixel else"


@dataclass
class EditResult:
    """An edited image with extra facts about how it was made (JSON-ready), kept in samples.jsonl."""

    image: Any  # PIL.Image.Image
    info: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class of benchmark methods; see the module docstring.

    Subclasses set the class attributes and implement `edit` (and `setup` when they load weights).

    - `name`, `description`;
    - `default_model`: the resolver name of the weights (`refcoco_edit.models.resolver`), None for none;
    - `reads`: the `Sample` fields `edit` uses;
    - `default_steps` / `default_size`: denoising steps and working size (longer side) when the run
      does not set them;
    - `option_defaults`: the method's own options and their defaults; `--method-option KEY=VALUE`
      values are converted to the default's type.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_model: ClassVar[str | None] = None
    reads: ClassVar[tuple[str, ...]] = ("source_image", "prompt")
    default_steps: ClassVar[int | None] = None
    default_size: ClassVar[int | None] = None
    option_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        *,
        model: str | None = None,
        overrides: Mapping[str, str] | None = None,
        device: Any = None,
        dtype: Any = None,
        steps: int | None = None,
        size: int | None = None,
        progress: bool = False,
        **options: Any,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.model_name = self._model_name(model)
        self.device = device
        self.dtype = dtype
        if steps is not None and int(steps) < 1:
            raise InputError(f"steps must be at least 1, got {steps}")
        if size is not None and int(size) < 8:
            raise InputError(f"size must be at least 8, got {size}")
        self.steps = int(steps) if steps is not None else self.default_steps
        if size is None:  # a model trained here records its size: run it at that size
            size = self._trained_size()
        self.size = int(size) if size is not None else self.default_size
        self.progress = progress
        self.options = parse_options(type(self), options)
        self._ready = False

    # ---- model names
    def _model_name(self, model: str | None) -> str | None:
        """`model` is a resolver name, or a path / Hub id that stands for the default model."""
        if model is None or self.default_model is None:
            if model is not None:
                raise InputError(f"method {self.name} uses no model weights; drop --method-model {model}")
            return self.default_model
        from refcoco_edit.models.resolver import MODEL_SPECS

        if model in MODEL_SPECS:
            return model
        self.overrides[self.default_model] = model
        return self.default_model

    def _model_folder(self) -> str | None:
        """The local folder the model is read from; None for Hub ids, unavailable models and methods
        without weights (nothing is built or loaded)."""
        if self.model_name is None:
            return None
        folder = model_folder_of(self.model_name, self.overrides)
        return folder if folder is not None and Path(folder).is_dir() else None

    @cached_property
    def training_manifest(self) -> dict[str, Any] | None:
        """The training manifest in the model's local folder, which `referdiffusion train` writes (read
        once); None for anything else (Hub ids, models without one)."""
        folder = self._model_folder()
        if folder is None:
            return None
        from referdiffusion.train.manifest import read_manifest

        return read_manifest(folder)

    def _trained_size(self) -> int | None:
        """The longer side the model was trained at, from its training manifest; None without one."""
        from referdiffusion.train.manifest import manifest_size

        return manifest_size(self.training_manifest, default=None)

    # ---- life cycle
    def availability(self) -> str | None:
        """None when the method can run, else why not (resolves names; loads and builds nothing)."""
        if self.model_name is None:
            return None
        return model_availability(self.model_name, self.overrides)

    def weights(self) -> str | None:
        """Where the weights would come from (for listings), None without weights or when unavailable."""
        return describe_source(self.model_name, self.overrides) if self.model_name is not None else None

    def setup(self) -> None:
        """Load what `edit` needs; raise ModelNotAvailableError when weights are missing."""

    def ensure_ready(self) -> None:
        if not self._ready:
            reason = self.availability()
            if reason is not None:
                raise ModelNotAvailableError(f"method {self.name}: {reason}")
            self.setup()
            self._ready = True

    def edit(self, sample: Any, *, seed: int) -> Any:
        """The edited image of `sample` (PIL RGB, or an `EditResult`)."""
        raise NotImplementedError

    # ---- description
    def config(self) -> dict[str, Any]:
        """What reproduces this method's outputs (JSON-ready); written into run.json and results.json."""
        out: dict[str, Any] = {"name": self.name, "class": f"{type(self).__module__}:{type(self).__qualname__}"}
        if self.model_name is not None:
            out["model"] = self.model_name
            source = self.overrides.get(self.model_name)
            if source:
                out["model_source"] = source
            folder = model_folder_of(self.model_name, self.overrides)
            if folder:
                out["model_folder"] = folder
        if self.steps is not None:
            out["steps"] = self.steps
        if self.size is not None:
            out["size"] = self.size
        out["options"] = dict(self.options)
        out["reads"] = list(self.reads)
        return out

    def label(self) -> str:
        """A short name for tables: the method, plus the model when it is not the default one."""
        if self.model_name is None:
            return self.name
        source = self.overrides.get(self.model_name)
        if source:
            return f"{self.name} ({source.rstrip('/').rsplit('/', 1)[-1]})"
        if self.model_name != self.default_model:
            return f"{self.name} ({self.model_name})"
        return self.name


# --------------------------------------------------------------------------------------------
# options


def convert_option(value: Any, default: Any, key: str) -> Any:
    """A CLI string converted to the type of the option's default (bool, int, float, str)."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    text = value.strip()
    if isinstance(default, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise InputError(f"option {key} takes true or false, got {value!r}")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise InputError(f"option {key} takes an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise InputError(f"option {key} takes a number, got {value!r}") from None
    if default is None:  # no type to go by: JSON scalars, else the string
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        return parsed if isinstance(parsed, (int, float, bool)) or parsed is None else text
    return value


def parse_options(cls: type[Method], given: Mapping[str, Any]) -> dict[str, Any]:
    """The method's options: its defaults updated by `given`; unknown keys are refused."""
    known = cls.option_defaults
    unknown = [k for k in given if k not in known]
    if unknown:
        names = ", ".join(known) or "none"
        raise InputError(f"method {cls.name} has no option {', '.join(map(repr, unknown))}; its options: {names}")
    return {k: convert_option(given[k], v, k) if k in given else v for k, v in known.items()}


def parse_option_items(items: list[str] | None) -> dict[str, str]:
    """`["guidance_scale=5", "segmenter=gt"]` -> {"guidance_scale": "5", "segmenter": "gt"}."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--method-option expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def model_availability(name: str, overrides: Mapping[str, str] | None = None) -> str | None:
    """None when the resolver has a source for `name` (nothing is built or loaded), else the reason."""
    from refcoco_edit.models.resolver import resolve

    try:
        resolve(name, overrides, build=False)
    except ModelNotAvailableError as exc:
        return str(exc)
    return None


def model_folder_of(name: str, overrides: Mapping[str, str] | None = None) -> str | None:
    """The folder model `name` is read from (absolute, links resolved), or its Hub id (kept as the id, so
    that a run's configuration does not change once the download is cached); None when unavailable.
    Nothing is built or loaded."""
    from refcoco_edit.models.resolver import resolve

    try:
        return resolve(name, overrides, build=False).source
    except ModelNotAvailableError:
        return None


def describe_source(name: str, overrides: Mapping[str, str] | None = None) -> str | None:
    """Where model `name` would load from, for listings: a local path, or a Hub id and whether it is
    in the local Hub cache; None when unavailable. Nothing is built or loaded."""
    from refcoco_edit.models.resolver import is_hub_cached, resolve

    try:
        resolved = resolve(name, overrides, build=False)
    except ModelNotAvailableError:
        return None
    if resolved.origin == "tiny":
        return f"built-in tiny model ({resolved.source})"
    if resolved.is_local:
        return resolved.source
    cached = "in the local Hub cache" if is_hub_cached(resolved.source) else "not downloaded yet"
    return f"Hub {resolved.source} ({cached})"


# --------------------------------------------------------------------------------------------
# registry


def _is_method(obj: Any) -> str | None:
    return None if isinstance(obj, type) and issubclass(obj, Method) else "is not a benchmark Method subclass"


# name -> "module:Class" (or a class registered at run time). Order = the order of `rie-bench list`.
METHODS: Registry[type[Method]] = Registry("method", {
    "identity": "benchmark.methods.identity:IdentityMethod",
    "reference": "benchmark.methods.reference:ReferenceMethod",
    "blended": "benchmark.methods.blended:BlendedMethod",
    "ip2p": "benchmark.methods.instruct:InstructPix2PixMethod",
    "magicbrush": "benchmark.methods.instruct:MagicBrushMethod",
    "instructdiffusion": "benchmark.methods.instructdiffusion:InstructDiffusionMethod",
    "seg_inpaint": "benchmark.methods.seg_inpaint:SegInpaintMethod",
    "referdiffusion": "benchmark.methods.referdiffusion:ReferDiffusionMethod",
}, check=_is_method, allow_paths=True)


def method_names() -> list[str]:
    return METHODS.names()


def register_method(name: str, target: str | type[Method]) -> None:
    """Make method `name` available to the runner and the CLI of this process: `target` is a Method
    subclass or a "module:Class" path (imported when the method is first asked for). Processes started
    apart (`accelerate launch`) do not see it: give them `--method module:Class` instead."""
    METHODS.register(name, target)


def get_method_class(name: str) -> type[Method]:
    """The class of a registered method name, or of a "module:Class" path."""
    return METHODS.load(name)


def create_method(name: str, **kwargs: Any) -> Method:
    """An (unloaded) instance of method `name`; see `Method.__init__` for the keywords."""
    return get_method_class(name)(**kwargs)
