"""Training configuration: dataclasses, YAML files, shipped configs by name, `key=value` overrides.

A config is a YAML mapping whose keys mirror `TrainConfig` (nested sections for `model`, `data`,
`losses`, `optim` and a list of `stages`). Everything is type-checked when it is loaded: an unknown
key, a value of the wrong type or an impossible setting stops the run before anything heavy starts,
with the key's full dotted path in the message.

- `base: NAME_OR_FILE` at the top of a file starts from another config (a shipped name, or a file
  relative to this one); mappings are merged key by key, lists (the stages) are replaced whole.
- Overrides (`referdiffusion train ... optim.learning_rate=1e-4 stages.main.max_steps=10`) use dotted
  paths; a stage is addressed by its `name` or its index. Each value is parsed for the type of the
  field it sets (`null`/`none` for optional fields; YAML for lists and mappings).
- The dataclass defaults are the real run's settings (AdamW, learning rate 5e-5, 5 % classifier-free
  dropout of text, image and both, as InstructPix2Pix) and the evaluation's image protocol (`aspect`:
  longer side 512, aspect kept, as `rie-bench run` feeds the model; the paper stretched to 480 x 480,
  which `data.resize=stretch data.resolution=480` reproduces); the shipped YAML files set the paper's
  ablation on top of them (`finetune`, `+rem`, `+rem+rcl`, `full`) and a `tiny` CPU run.
- A stage's `prompt_style` picks the stage-1 prompt recipe (`mask`, the paper's, or `expression`) from
  the prompts `refcoco-edit synth` records for both; its `allow_eval_splits` must be true for a stage
  to read a dataset's evaluation splits (val, testA, testB, test).

YAML 1.1 (PyYAML) reads `5e-5` as a string; float fields accept such numeric strings.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from refcoco_edit.errors import InputError
from refcoco_edit.io import dumps
from referdiffusion.loss_config import TERMS, LossConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Shipped config names -> file in referdiffusion/configs/ (file stems work as names too).
SHIPPED: dict[str, str] = {
    "tiny": "tiny.yaml",
    "finetune": "finetune.yaml",
    "+rem": "rem.yaml",
    "+rem+rcl": "rem_rcl.yaml",
    "full": "full.yaml",
}
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
RESIZE_MODES = ("aspect", "stretch", "crop")
PROMPT_STYLES = ("mask", "expression")  # refcoco_edit.dataset.synth.PROMPT_STYLES (kept light: no numpy here)
TRAIN_SPLIT = "train"  # every other split is an evaluation split
_CONFIG_STEM = re.compile(r"[a-z0-9][a-z0-9_-]*")  # a name that can only mean a file of configs/


class ConfigError(InputError):
    """A training config that cannot be used as written."""


@dataclass
class ModelConfig:
    """Where the weights come from and what is trained."""

    # Resolver name (ip2p, sd15, tiny-ip2p ...) or folder: an InstructPix2Pix / SD 1.5 checkpoint (a fresh
    # REM is added as `referdiffusion init` does) or a ReferDiffusion checkpoint (trained further as it is).
    pretrained: str = "ip2p"
    use_rem: bool = True  # False: plain InstructPix2Pix fine-tune (the REM is neither run nor trained)
    rem_seed: int = 0  # seed of a fresh REM's initialisation
    rem_kwargs: dict[str, Any] = field(default_factory=dict)  # RegionEmbedder arguments of a fresh REM
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9999


@dataclass
class DataConfig:
    """How samples become tensors (shared by every stage)."""

    resolution: int = 512  # aspect: the longer side; stretch / crop: the square's side
    # aspect: the evaluation's protocol (longer side = resolution, aspect kept, sides rounded to multiples of
    # 8, Lanczos), padded to a square for batching; stretch: whole picture to resolution^2 (the paper's, at
    # 480); crop: shorter side to resolution, then the centre square
    resize: str = "aspect"
    max_token_length: int | None = None  # None: the tokenizer's (77 for CLIP)
    conditioning_dropout: float = 0.05  # InstructPix2Pix: text, image and both, each with this probability
    num_workers: int = 0


@dataclass
class LossesConfig(LossConfig):
    """The `losses` section: `referdiffusion.loss_config.LossConfig`, checked by `TrainConfig.check`
    (with every other problem of the config at once) rather than on construction."""

    def __post_init__(self) -> None:
        pass


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (over the sum of the stages' steps)."""

    learning_rate: float = 5e-5
    rem_learning_rate: float | None = None  # None: learning_rate
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0  # 0: no clipping
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0


@dataclass
class StageConfig:
    """One training stage: a dataset and a number of optimiser steps (stage 1: synth, stage 2: RefCOCO-Edit)."""

    name: str = "main"
    # An exported RefCOCO-Edit / `refcoco-edit synth` folder, a Hub dataset id, or `sample:synth` /
    # `sample:edits` (stage-1 / stage-2 data made once from the bundled RefShapes sample).
    dataset: str | None = None
    split: str | None = "train"  # None: every split of the dataset
    max_samples: int | None = None  # use only the first N rows
    max_steps: int = 1000
    # Stage-1 prompt recipe read from the rows' generation["prompts"] (`refcoco-edit synth` records both):
    # mask (the paper's: "paint a man on the red mask") | expression; None: the rows' own prompt
    prompt_style: str | None = None
    allow_eval_splits: bool = False  # True: the stage may read val/testA/testB/test rows (warned)
    losses: dict[str, Any] = field(default_factory=dict)  # this stage's changes to the `losses` section


@dataclass
class TrainConfig:
    """A whole training run."""

    name: str = "referdiffusion"
    seed: int = 0
    output_dir: str | None = None  # None: runs/<name>
    batch_size: int = 4  # per process
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    max_steps: int | None = None  # stop the run at this global step (schedules still follow the stages)
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3  # keep the last K checkpoints; None keeps all
    log_every: int = 10
    report_to: str = "tensorboard"  # tensorboard | none | wandb | ... (accelerate tracker names, comma separated)
    ddp_find_unused_parameters: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])

    # ------------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return sum(s.max_steps for s in self.stages)

    def stage_losses(self, stage: StageConfig) -> LossesConfig:
        """The `losses` section with a stage's changes, type-checked."""
        return _build(LossesConfig, {**dataclasses.asdict(self.losses), **stage.losses}, f"stages.{stage.name}.losses")

    def stage_loss_config(self, stage: StageConfig) -> LossConfig:
        """The `LossConfig` of a stage."""
        return LossConfig(**dataclasses.asdict(self.stage_losses(stage)))

    def check(self) -> TrainConfig:
        """Refuse settings that cannot work; returns self."""
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.gradient_accumulation_steps >= 1,
             f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        need(self.mixed_precision in MIXED_PRECISION,
             f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        need(self.checkpointing_steps >= 1, f"checkpointing_steps must be >= 1, got {self.checkpointing_steps}")
        need(self.checkpoints_total_limit is None or self.checkpoints_total_limit >= 1,
             f"checkpoints_total_limit must be >= 1 or null, got {self.checkpoints_total_limit}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        d, o, m = self.data, self.optim, self.model
        need(d.resolution >= 8 and d.resolution % 8 == 0,
             f"data.resolution must be a multiple of 8, got {d.resolution}")
        need(d.resize in RESIZE_MODES, f"data.resize must be one of {', '.join(RESIZE_MODES)}, got {d.resize!r}")
        need(0 <= d.conditioning_dropout <= 1 / 3,
             f"data.conditioning_dropout must be in [0, 1/3] (text, image and both), got {d.conditioning_dropout}")
        need(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
        need(d.max_token_length is None or d.max_token_length >= 2,
             f"data.max_token_length must be >= 2, got {d.max_token_length}")
        need(o.learning_rate > 0, f"optim.learning_rate must be > 0, got {o.learning_rate}")
        need(o.rem_learning_rate is None or o.rem_learning_rate > 0,
             f"optim.rem_learning_rate must be > 0, got {o.rem_learning_rate}")
        need(o.lr_scheduler in LR_SCHEDULERS,
             f"optim.lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {o.lr_scheduler!r}")
        need(o.lr_warmup_steps >= 0, f"optim.lr_warmup_steps must be >= 0, got {o.lr_warmup_steps}")
        need(o.max_grad_norm >= 0, f"optim.max_grad_norm must be >= 0, got {o.max_grad_norm}")
        need(0 < m.ema_decay < 1, f"model.ema_decay must be in (0, 1), got {m.ema_decay}")
        need(bool(self.stages), "stages: at least one stage is needed")
        names = [s.name for s in self.stages]
        need(len(set(names)) == len(names), f"stage names must differ, got {names}")
        for i, s in enumerate(self.stages):
            where = f"stages.{s.name or i}"
            need(bool(s.name) and not s.name.isdigit(), f"{where}.name must be a non-numeric name, got {s.name!r}")
            need(s.max_steps >= 1, f"{where}.max_steps must be >= 1, got {s.max_steps}")
            need(s.max_samples is None or s.max_samples >= 1, f"{where}.max_samples must be >= 1, got {s.max_samples}")
            need(s.split in (None, TRAIN_SPLIT) or s.allow_eval_splits,
                 f"{where}.split {s.split!r} is an evaluation split of RefCOCO-Edit: train on {TRAIN_SPLIT!r}, or set "
                 f"{where}.allow_eval_splits=true to use it anyway")
            need(s.prompt_style is None or s.prompt_style in PROMPT_STYLES,
                 f"{where}.prompt_style must be null or one of {', '.join(PROMPT_STYLES)}, got {s.prompt_style!r}")
            need(bool(s.dataset), f"{where}.dataset is not set: give a dataset folder or Hub id "
                                  f"(e.g. `{where}.dataset=DIR`), or sample:synth / sample:edits")
            try:
                losses = self.stage_losses(s)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            problems += [f"{where}.losses: {p}" for p in losses.problems()]
            if not m.use_rem and (losses.mask_weight > 0 or losses.edit_weight > 0):
                problems.append(f"{where}: L_mask and L_edit need the REM (model.use_rem=false): set "
                                "losses.mask_weight=0 and losses.edit_weight=0")
            if not any(losses.enabled(t) for t in TERMS):
                problems.append(f"{where}: every loss weight is 0, nothing to train")
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))
        return self


# ---------------------------------------------------------------------------------------------
# type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if origin is Literal:
        return " | ".join(map(repr, typing.get_args(tp)))
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """`value` (from YAML) as type `tp`, or a ConfigError naming `path`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path} must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{path} must be a mapping with string keys, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} must be a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported field type {tp!r}")  # pragma: no cover (a bug in this module)


def _unknown_key(key: str, known: list[str], path: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f"{path}.{key}" if path else key
    return ConfigError(f"unknown config key {where!r}{hint}; known keys here: {', '.join(known)}")


def _build(cls: type, values: dict[str, Any], path: str = "") -> Any:
    types_ = _field_types(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types_:
            raise _unknown_key(str(key), known, path)
        kwargs[key] = _coerce(value, types_[key], f"{path}.{key}" if path else key)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A checked `TrainConfig` from a plain mapping (what a YAML file holds, `base` already merged)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a training config must be a mapping, got {type(values).__name__}")
    return _build(TrainConfig, values).check()


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flat_dict(values: dict[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """A config mapping as flat dotted key -> scalar, other values as JSON (trackers store hyper-parameters
    flat; a resumed run compares its settings key by key)."""
    out: dict[str, int | float | str | bool] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_dict(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = dumps(value)
    return out


# ---------------------------------------------------------------------------------------------
# files, names, overrides


def shipped_names() -> list[str]:
    """The ablation's names, then the other configs of configs/ by file stem (the RefShapes study's rows)."""
    stems = {Path(f).stem for f in SHIPPED.values()}
    return list(SHIPPED) + sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem not in stems)


def find_config(name_or_path: str | Path) -> Path:
    """A shipped config's file for a name (`tiny`, `+rem`, `rem` ...), else `name_or_path` as a file."""
    text = str(name_or_path)
    if text in SHIPPED:
        return CONFIG_DIR / SHIPPED[text]
    by_stem = {Path(f).stem: f for f in SHIPPED.values()}
    if text in by_stem:
        return CONFIG_DIR / by_stem[text]
    if _CONFIG_STEM.fullmatch(text) and (CONFIG_DIR / f"{text}.yaml").is_file():
        return CONFIG_DIR / f"{text}.yaml"  # any config shipped in configs/ (refshapes-finetune ...)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or "/" in text:
        raise ConfigError(f"config file not found: {path}")
    raise ConfigError(f"unknown config {text!r}: not a file, and not a shipped config ({', '.join(SHIPPED)})")


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a config file with its `base` chain merged in (not type-checked yet)."""
    path = find_config(name_or_path).resolve()
    if path in _seen:
        raise ConfigError(f"config base cycle: {' -> '.join(map(str, (*_seen, path)))}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a config name or file, got {base!r}")
    base_ref: str | Path = path.parent / base if (path.parent / base).is_file() else base
    return _merge(load_raw(base_ref, (*_seen, path)), data)


def _parse_scalar(raw: str, tp: Any, path: str) -> Any:
    """An override's text as a value of type `tp` (the field's type decides how it is read)."""
    import yaml

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and raw.strip().lower() in ("null", "none", "~", ""):
            return None
        if len(args) == 1:
            return _parse_scalar(raw, args[0], path)
    if tp is str:
        return raw
    if tp is bool:
        low = raw.strip().lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{path} must be true or false, got {raw!r}")
    if tp is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise ConfigError(f"{path} must be an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw.strip())
        except ValueError:
            raise ConfigError(f"{path} must be a number, got {raw!r}") from None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot read {raw!r} as YAML: {exc}") from None


def _stage_position(stages: list[Any], key: str, path: str) -> int:
    if key.isdigit():
        i = int(key)
        if i >= len(stages):
            raise ConfigError(f"{path}: there are {len(stages)} stages (0..{len(stages) - 1})")
        return i
    names = [s.get("name", StageConfig.name) if isinstance(s, dict) else None for s in stages]
    if key not in names:
        raise ConfigError(f"{path}: no stage named {key!r}; stages: {', '.join(map(str, names))}")
    return names.index(key)


def apply_override(data: dict[str, Any], item: str) -> dict[str, Any]:
    """Apply one `dotted.key=value` to a raw config mapping (in place; also returned)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key part")
    cls: Any = TrainConfig  # a config dataclass, "stages" (the list of stages) or dict (a free mapping)
    node: Any = data
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if cls == "stages":
            pos = _stage_position(node, part, path)
            if last:
                raise ConfigError(f"override {item!r}: give a field of the stage, e.g. {path}.max_steps=100")
            node = node[pos]
            if not isinstance(node, dict):
                raise ConfigError(f"{path} must be a mapping, got {node!r}")
            cls = StageConfig
            continue
        if cls is dict:
            if last:
                node[part] = _parse_scalar(raw, Any, path)
                return data
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path} must be a mapping, got {node!r}")
            continue
        fields = _field_types(cls)
        if part not in fields:
            raise _unknown_key(part, list(fields), ".".join(parts[:i]))
        tp = fields[part]
        if last:
            structured = dataclasses.is_dataclass(tp) or typing.get_origin(tp) in (list, dict)
            node[part] = _parse_scalar(raw, Any if structured else tp, path)
            return data
        if typing.get_origin(tp) is list:
            node = node.setdefault(part, [dataclasses.asdict(s) for s in TrainConfig().stages])
            if not isinstance(node, list):
                raise ConfigError(f"{path} must be a list, got {node!r}")
            cls = "stages"
        elif dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path} must be a mapping, got {node!r}")
            cls = tp if dataclasses.is_dataclass(tp) else dict
        else:
            raise ConfigError(f"override {item!r}: {path} is {_type_name(tp)}, it has no fields")
    return data  # pragma: no cover


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A shipped config by name or a YAML file, with `key=value` overrides applied; type-checked."""
    data = load_raw(name_or_path)
    for item in overrides:
        apply_override(data, item)
    return config_from_dict(data)


def dump_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (what a run actually used)."""
    import yaml

    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
