"""The ReferDiffusion training loop (stage 1, stage 2, ablations) on `accelerate`.

One process per device; `accelerate launch` gives several GPUs or nodes. The loop:

- loads the model (`model.pretrained`: an InstructPix2Pix / SD 1.5 checkpoint gets a fresh REM as
  `referdiffusion init` makes it; a ReferDiffusion checkpoint is trained further as it is); trains the
  UNet (all of it, as InstructPix2Pix) and the REM; the VAE and text encoder stay frozen (in the mixed
  precision dtype, when one is set);
- runs the stages in order, one optimiser and learning-rate schedule over the sum of their steps;
  each optimiser step takes `gradient_accumulation_steps` micro-batches of `batch_size` per process;
- per micro-batch: InstructPix2Pix classifier-free dropout flags, then `referdiffusion.losses.
  compute_losses` with the stage's loss weights; a loss that is NaN or infinite on any process stops
  the run (`TrainingDivergedError`: the step, the stage and the batch's sample ids) before it reaches the
  weights; nothing is saved after it, so the last checkpoint is the last good one.

Exact resume. Everything random in a step is drawn from generators re-seeded from (seed, process,
step, micro-batch), and the data order comes from `data.StepSampler`, whose position is a function of
the step; the optimiser, the LR schedule, the EMA, the gradient scaler and the global torch / numpy /
python RNG states are saved with each checkpoint by `accelerator.save_state`. A run stopped at step k
and resumed therefore gives the same weights as one that never stopped (tested bit for bit on CPU).
`max_steps` (and `--max-steps`) only stops the run: schedules follow the configured stage lengths.

Output folder:

    OUT/config.yaml                 the resolved config of the run
    OUT/frozen_components/          vae, text_encoder, tokenizer, scheduler (DDIM), model_index.json: written
                                    once, hard-linked (or copied) into each checkpoint
    OUT/checkpoint-<step>/          a ReferDiffusionPipeline folder (`from_pretrained` loads it) with the
                                    trained unet and rem, plus training_state/ (accelerate: optimiser, LR
                                    schedule, RNG states, EMA, scaler), trainer_state.json, and with EMA
                                    on, ema/unet and ema/rem (the averaged weights)
    OUT/final/                      the pipeline at the end of the run (EMA weights when EMA is on)
    OUT/logs/                       tracker logs (TensorBoard by default)

Checkpoints are written into a temporary folder and renamed into place, so a `checkpoint-<step>`
folder is complete; only the last `checkpoints_total_limit` are kept. The trainer's weights are
saved once, in diffusers format: accelerate's own copy of the model weights is skipped (save hook)
and resuming reads them back from the checkpoint's unet/ and rem/. DeepSpeed and FSDP are not
supported (their sharded states need accelerate's own model files).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refcoco_edit.errors import InputError, ModelNotAvailableError, RefcocoEditError
from referdiffusion.train.config import ConfigError, TrainConfig, config_to_dict, dump_config

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE = "training_state"
FROZEN = "frozen_components"
FINAL = "final"
TRAINER_STATE = "trainer_state.json"
FROZEN_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler")
TRACKER_PROJECT = "referdiffusion"
# Settings that may change between a run and its resumption without changing what is computed.
RESUME_SAFE_KEYS = {"max_steps", "output_dir", "log_every", "report_to", "checkpointing_steps",
                    "checkpoints_total_limit", "data.num_workers"}


class TrainingDivergedError(RefcocoEditError):
    """The loss became NaN or infinite; nothing from that step on was saved."""

    def __init__(self, step: int, stage: str, value: float, sample_ids: list[str], checkpoint: Path | None) -> None:
        self.step, self.stage, self.value = step, stage, value
        self.sample_ids, self.checkpoint = sample_ids, checkpoint
        last = (f"the last good checkpoint is {checkpoint} (resume with --resume, e.g. with a lower learning rate)"
                if checkpoint else "no checkpoint was written before it")
        super().__init__(f"loss is not finite ({value}) at step {step} (stage {stage}); batch samples: "
                         f"{', '.join(sample_ids)}; stopped without saving: {last}")


@dataclass
class _NonFiniteLoss(Exception):
    """Raised inside a step; the loop turns it into TrainingDivergedError with the last checkpoint."""

    step: int
    stage: str
    value: float
    sample_ids: list[str]


@dataclass
class TrainResult:
    """What a call of `train` did (the same on every process)."""

    output_dir: Path
    global_step: int
    losses: list[float] = field(default_factory=list)  # mean loss of each optimiser step of this call
    terms: list[dict[str, float]] = field(default_factory=list)  # and of each term, unweighted
    checkpoints: list[Path] = field(default_factory=list)  # those on disk at the end
    final: Path | None = None
    resumed_from: Path | None = None


# ---------------------------------------------------------------------------------------------
# checkpoints on disk


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    tail = name[len(CHECKPOINT_PREFIX):]
    return int(tail) if tail.isdigit() else None


def list_checkpoints(output_dir: Path | str) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in out.iterdir() if p.is_dir()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)
            if (p / TRAINER_STATE).is_file()]


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _load_weights(module: Any, folder: Path) -> None:
    """Load a `save_pretrained` folder's safetensors weights (one file or shards) into `module`, strictly."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotAvailableError(f"no safetensors weights in {folder}")
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f)))
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------
# model


def is_referdiffusion_checkpoint(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / "rem").is_dir()


def load_pipeline(config: TrainConfig):
    """The `ReferDiffusionPipeline` the run starts from (weights as stored, float32, on the CPU)."""
    from referdiffusion.init import make_pipeline, model_name, resolve_source
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline

    m = config.model
    path = Path(m.pretrained).expanduser()
    if path.is_dir() and is_referdiffusion_checkpoint(path):
        if m.rem_kwargs:
            log.warning("model.rem_kwargs is ignored: %s already holds a REM", path)
        try:
            return ReferDiffusionPipeline.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ModelNotAvailableError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    try:
        return make_pipeline(resolve_source(m.pretrained), seed=m.rem_seed, rem_kwargs=m.rem_kwargs or None,
                             name=model_name(m.pretrained))
    except TypeError as exc:
        raise ConfigError(f"model.rem_kwargs: {exc}") from None


class _ModelCall:
    """What `compute_losses` needs of the UNet (`.device`, `.dtype`, `.config`, a call) when the called object
    is a DDP or autocast wrapper that lacks those attributes."""

    def __init__(self, wrapped: Any, inner: Any) -> None:
        self._wrapped, self._inner = wrapped, inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapped(*args, **kwargs)

    @property
    def device(self):
        return self._inner.device

    @property
    def dtype(self):
        return self._inner.dtype

    @property
    def config(self):
        return self._inner.config


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config as flat key -> scalar (trackers store hyper-parameters flat)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def _trackers(report_to: str) -> list[str]:
    import importlib.util

    names = [t.strip() for t in report_to.split(",") if t.strip() and t.strip() != "none"]
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        log.warning("tensorboard is not installed (pip install 'refcoco-edit[train]'); training without it")
        names.remove("tensorboard")
    return names


# ---------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """One training run; `run()` does it. Prefer `train(...)`."""

    def __init__(self, config: TrainConfig, *, output_dir: Path | str | None = None, max_steps: int | None = None,
                 resume: bool | str | Path = False, progress: bool = True) -> None:
        self.config = config.check()
        if max_steps is not None and max_steps < 1:
            raise InputError(f"--max-steps must be >= 1, got {max_steps}")
        out = output_dir or config.output_dir or f"runs/{config.name.strip('+').replace('+', '_') or 'run'}"
        self.output_dir = Path(out).expanduser().absolute()
        self.stop_step = min(config.total_steps, max_steps or config.max_steps or config.total_steps)
        self.resume = resume
        self.progress = progress

    # -- set-up -------------------------------------------------------------------------------
    def _resume_point(self) -> Path | None:
        if not self.resume:
            if list_checkpoints(self.output_dir):
                raise InputError(f"{self.output_dir} already holds checkpoints of a run: pass --resume to continue "
                                 "it, or choose another --output")
            return None
        if self.resume is not True:
            ckpt = Path(self.resume).expanduser().absolute()
            if not (ckpt / TRAINER_STATE).is_file():
                raise InputError(f"{ckpt} is not a checkpoint of this trainer (no {TRAINER_STATE})")
            return ckpt
        found = list_checkpoints(self.output_dir)
        if not found:
            log.warning("--resume: no checkpoint in %s, starting a new run", self.output_dir)
            return None
        return found[-1]

    def _check_resumed_config(self) -> None:
        import yaml

        saved_path = self.output_dir / "config.yaml"
        if not saved_path.is_file():
            return
        saved = _flat(yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {})
        now = _flat(config_to_dict(self.config))
        changed = sorted(k for k in set(saved) | set(now)
                         if saved.get(k) != now.get(k) and k not in RESUME_SAFE_KEYS)
        if changed:
            log.warning("resuming with a changed config (%s): the result will differ from an uninterrupted run",
                        ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed))

    def run(self) -> TrainResult:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        cfg = self.config
        resume_from = self._resume_point()
        if resume_from is not None:
            self._check_resumed_config()
        trackers = _trackers(cfg.report_to)
        accelerator = Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused_parameters)],
        )
        try:
            return self._run(accelerator, resume_from)
        finally:
            try:
                accelerator.end_training()
            finally:
                # Accelerator state is process-global; a later run in this process (tests, notebooks) may set
                # other precision or accumulation settings.
                AcceleratorState._reset_state()
                GradientState._reset_state()

    def _run(self, accelerator: Any, resume_from: Path | None) -> TrainResult:
        import torch
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from tqdm.auto import tqdm

        cfg = self.config
        main = accelerator.is_main_process
        set_seed(cfg.seed)
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)

        # models
        pipe = load_pipeline(cfg)
        unet, rem, vae, text_encoder, tokenizer = pipe.unet, pipe.rem, pipe.vae, pipe.text_encoder, pipe.tokenizer
        max_length = cfg.data.max_token_length or tokenizer.model_max_length
        n_pos = getattr(text_encoder.config, "max_position_embeddings", max_length)
        if max_length > n_pos:
            raise ConfigError(f"data.max_token_length {max_length} exceeds the text encoder's {n_pos} positions")
        # A new run writes them afresh: a folder left by a run that died before its first checkpoint may
        # hold another model's VAE and text encoder. A resumed run keeps what its checkpoints link to.
        if main and (resume_from is None or not (self.output_dir / FROZEN / "model_index.json").is_file()):
            self._write_frozen(pipe)
        if main and resume_from is None:
            dump_config(cfg, self.output_dir / "config.yaml")
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
        device = accelerator.device
        vae.requires_grad_(False)
        text_encoder.requires_grad_(False)
        for frozen in (vae, text_encoder):
            frozen.to(device)
            if weight_dtype != torch.float32:
                frozen.to(dtype=weight_dtype)
            frozen.eval()
        use_rem = cfg.model.use_rem
        if cfg.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        rem.train(use_rem)
        rem.requires_grad_(use_rem)

        # null prompt for text dropout, at the data's token length
        from referdiffusion.text import tokenize

        with torch.no_grad():
            null_tokens = tokenize(tokenizer, [""], max_length)
            use_mask = getattr(text_encoder.config, "use_attention_mask", False)
            null_mask = null_tokens["attention_mask"].to(device)
            null_embeds = text_encoder(null_tokens["input_ids"].to(device),
                                       attention_mask=null_mask if use_mask else None)[0]
        null_prompt = (null_embeds, null_mask)

        # optimiser, schedule, EMA
        o = cfg.optim
        groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": o.learning_rate}]
        if use_rem:
            groups.append({"params": list(rem.parameters()), "lr": o.rem_learning_rate or o.learning_rate})
        optimizer = torch.optim.AdamW(groups, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2),
                                      eps=o.adam_epsilon, weight_decay=o.weight_decay)
        lr_scheduler = get_scheduler(o.lr_scheduler, optimizer=optimizer, num_warmup_steps=o.lr_warmup_steps,
                                     num_training_steps=cfg.total_steps)
        if use_rem:
            unet_w, rem_w, optimizer = accelerator.prepare(unet, rem, optimizer)
            rem = accelerator.unwrap_model(rem_w)
        else:
            unet_w, optimizer = accelerator.prepare(unet, optimizer)
            rem_w = None
        unet = accelerator.unwrap_model(unet_w)
        trained = [unet] + ([rem] if use_rem else [])
        params = [p for m in trained for p in m.parameters() if p.requires_grad]
        accelerator.register_for_checkpointing(lr_scheduler)
        emas: dict[str, Any] = {}
        if cfg.model.ema:
            from diffusers.training_utils import EMAModel

            for name, module in (("unet", unet), ("rem", rem)):
                if name == "rem" and not use_rem:
                    continue
                ema = EMAModel(module.parameters(), decay=cfg.model.ema_decay, model_cls=type(module),
                               model_config=module.config)
                ema.to(device)
                accelerator.register_for_checkpointing(ema)
                emas[name] = ema

        # weights are saved (and read back) in diffusers format by this trainer, not by accelerate
        def save_hook(models: list, weights: list, output_dir: str) -> None:
            weights.clear()

        def load_hook(models: list, input_dir: str) -> None:
            models.clear()

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

        global_step = 0
        if resume_from is not None:
            state = json.loads((resume_from / TRAINER_STATE).read_text(encoding="utf-8"))
            global_step = int(state["global_step"])
            _load_weights(unet, resume_from / "unet")
            if use_rem:
                _load_weights(rem, resume_from / "rem")
            accelerator.load_state(str(resume_from / TRAINING_STATE))
            for ema in emas.values():
                ema.to(device)
            log.info("resumed from %s at step %d", resume_from, global_step)

        accelerator.init_trackers(TRACKER_PROJECT, config=_flat(config_to_dict(cfg)))

        ctx = _StepContext(self, accelerator, cfg, unet_w, unet, rem_w, rem, vae, text_encoder, noise_scheduler,
                           optimizer, lr_scheduler, params, emas, null_prompt, weight_dtype, trained)
        result = TrainResult(output_dir=self.output_dir, global_step=global_step, resumed_from=resume_from)
        bar = tqdm(total=self.stop_step, initial=global_step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (main and self.progress))
        last_saved = global_step if resume_from is not None else None
        try:
            stage_start = 0
            for stage_index, stage in enumerate(cfg.stages):
                stage_end = stage_start + stage.max_steps
                if global_step >= stage_end or global_step >= self.stop_step:
                    stage_start = stage_end
                    continue
                loader = self._loader(stage, stage_index, tokenizer, accelerator,
                                      start_batch=(global_step - stage_start) * cfg.gradient_accumulation_steps)
                loss_config = cfg.stage_loss_config(stage)
                batches = iter(loader)
                log.info("stage %s: steps %d..%d on %s", stage.name, global_step + 1, stage_end, stage.dataset)
                while global_step < min(stage_end, self.stop_step):
                    loss, terms = ctx.step(batches, global_step, stage.name, loss_config)
                    global_step += 1
                    result.losses.append(loss)
                    result.terms.append(terms)
                    ctx.log(global_step, loss, terms)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", stage=stage.name)
                    if global_step % cfg.checkpointing_steps == 0:
                        self._save_checkpoint(ctx, global_step, stage.name)
                        last_saved = global_step
                del batches, loader
                stage_start = stage_end
            if last_saved != global_step:
                self._save_checkpoint(ctx, global_step, self._stage_at(global_step - 1))
            result.final = self._save_final(ctx)
        except _NonFiniteLoss as exc:
            last = (list_checkpoints(self.output_dir) or [None])[-1]
            raise TrainingDivergedError(exc.step, exc.stage, exc.value, exc.sample_ids, last) from None
        finally:
            bar.close()
        accelerator.wait_for_everyone()
        result.global_step = global_step
        result.checkpoints = list_checkpoints(self.output_dir)
        return result

    def _stage_at(self, step: int) -> str:
        """The stage that runs step `step` (0-based)."""
        start = 0
        for stage in self.config.stages:
            start += stage.max_steps
            if step < start:
                return stage.name
        return self.config.stages[-1].name

    def _loader(self, stage: Any, stage_index: int, tokenizer: Any, accelerator: Any, start_batch: int):
        import torch

        from referdiffusion.train.data import DataOptions, EditingDataset, StepSampler, collate, open_dataset

        cfg = self.config
        ds = open_dataset(stage.dataset, stage.split, stage.max_samples)
        dataset = EditingDataset(ds, tokenizer, DataOptions(cfg.data.resolution, cfg.data.resize,
                                                            cfg.data.max_token_length))
        sampler = StepSampler(len(dataset), cfg.batch_size, seed=cfg.seed * 1000 + stage_index,
                              rank=accelerator.process_index, world=accelerator.num_processes,
                              start_batch=start_batch)
        return torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
            num_workers=cfg.data.num_workers, pin_memory=accelerator.device.type == "cuda",
        )

    # -- saving -------------------------------------------------------------------------------
    def _write_frozen(self, pipe: Any) -> None:
        """The parts no step changes, once: model_index.json, vae, text_encoder, tokenizer, scheduler."""
        dest = self.output_dir / FROZEN
        tmp = self.output_dir / f".{FROZEN}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        pipe.save_config(tmp)
        for name in FROZEN_PARTS:
            getattr(pipe, name).save_pretrained(tmp / name)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)

    def _write_pipeline(self, folder: Path, unet: Any, rem: Any) -> None:
        frozen = self.output_dir / FROZEN
        shutil.copy2(frozen / "model_index.json", folder / "model_index.json")
        for name in FROZEN_PARTS:
            shutil.copytree(frozen / name, folder / name, copy_function=_link_or_copy)
        unet.save_pretrained(folder / "unet")
        rem.save_pretrained(folder / "rem")

    def _save_checkpoint(self, ctx: _StepContext, step: int, stage: str) -> Path:
        acc = ctx.accelerator
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        tmp = self.output_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self._write_pipeline(tmp, ctx.unet, ctx.rem)
            for name, ema in ctx.emas.items():
                module = ctx.unet if name == "unet" else ctx.rem
                with _ema_weights(ema, module):
                    module.save_pretrained(tmp / "ema" / name)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / TRAINING_STATE))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"global_step": step, "stage": stage, "config": self.config.name, "time": time.time()}
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._rotate()
            log.info("saved %s", final)
        acc.wait_for_everyone()
        return final

    def _rotate(self) -> None:
        keep = self.config.checkpoints_total_limit
        if keep is None:
            return
        found = list_checkpoints(self.output_dir)
        for old in found[: max(0, len(found) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
            log.info("removed old checkpoint %s", old)

    def _save_final(self, ctx: _StepContext) -> Path:
        acc = ctx.accelerator
        dest = self.output_dir / FINAL
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = self.output_dir / f".{FINAL}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with _ema_weights(ctx.emas.get("unet"), ctx.unet), _ema_weights(ctx.emas.get("rem"), ctx.rem):
                self._write_pipeline(tmp, ctx.unet, ctx.rem)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        acc.wait_for_everyone()
        return dest


class _ema_weights:
    """Context: `module` holds the EMA's averaged weights inside, its own weights again after (exactly)."""

    def __init__(self, ema: Any, module: Any) -> None:
        self.ema, self.module = ema, module

    def __enter__(self) -> None:
        if self.ema is not None:
            self.ema.store(self.module.parameters())
            self.ema.copy_to(self.module.parameters())

    def __exit__(self, *exc: Any) -> None:
        if self.ema is not None:
            self.ema.restore(self.module.parameters())


class _StepContext:
    """The objects one optimiser step uses, and the step itself."""

    def __init__(self, trainer: Trainer, accelerator: Any, cfg: TrainConfig, unet_w: Any, unet: Any, rem_w: Any,
                 rem: Any, vae: Any, text_encoder: Any, noise_scheduler: Any, optimizer: Any, lr_scheduler: Any,
                 params: list, emas: dict[str, Any], null_prompt: tuple, weight_dtype: Any, trained: list) -> None:
        import torch

        self.trainer, self.accelerator, self.cfg = trainer, accelerator, cfg
        self.unet_w, self.unet, self.rem_w, self.rem = unet_w, unet, rem_w, rem
        self.vae, self.text_encoder, self.noise_scheduler = vae, text_encoder, noise_scheduler
        self.optimizer, self.lr_scheduler, self.params, self.emas = optimizer, lr_scheduler, params, emas
        self.null_prompt, self.weight_dtype, self.trained = null_prompt, weight_dtype, trained
        self.unet_call = _ModelCall(unet_w, unet)
        self.device_generator = torch.Generator(device=accelerator.device)
        self.cpu_generator = torch.Generator()
        self.wrapped = [unet_w] + ([rem_w] if rem_w is not None else [])
        self._pending: list[tuple[float, dict[str, float]]] = []

    def _reseed(self, step: int, micro: int) -> None:
        import numpy as np

        seq = np.random.SeedSequence([self.cfg.seed, self.accelerator.process_index, step, micro])
        a, b = (int(x) % (2**63) for x in seq.generate_state(2, np.uint64))
        self.device_generator.manual_seed(a)
        self.cpu_generator.manual_seed(b)

    def step(self, batches: Any, step: int, stage: str, loss_config: Any) -> tuple[float, dict[str, float]]:
        """One optimiser step (gradient_accumulation_steps micro-batches); returns the mean loss and terms."""
        import torch
        from accelerate.utils import gather_object

        from referdiffusion.losses import compute_losses, sample_conditioning_dropout

        acc, cfg = self.accelerator, self.cfg
        losses: list[torch.Tensor] = []
        term_sums: dict[str, torch.Tensor] = {}
        for micro in range(cfg.gradient_accumulation_steps):
            batch = next(batches)
            self._reseed(step, micro)
            bsz = batch["input_ids"].shape[0]
            batch["drop_text"], batch["drop_image"] = sample_conditioning_dropout(
                bsz, cfg.data.conditioning_dropout, self.cpu_generator)
            with acc.accumulate(*self.wrapped):
                out = compute_losses(
                    batch, unet=self.unet_call, rem=self.rem_w,
                    noise_scheduler=self.noise_scheduler, text_encoder=self.text_encoder, vae=self.vae,
                    config=loss_config, generator=self.device_generator, null_prompt=self.null_prompt,
                    scaling_factor=float(self.vae.config.scaling_factor),
                )
                value = acc.gather(out.loss.detach().float().reshape(1))
                if not bool(torch.isfinite(value).all()):
                    ids = gather_object(list(batch["sample_id"]))
                    bad = value[~torch.isfinite(value)][0].item()
                    raise _NonFiniteLoss(step + 1, stage, bad, [str(i) for i in ids])
                acc.backward(out.loss)
                if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.params, cfg.optim.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(value.mean())
            for k, v in out.terms.items():
                term_sums[k] = term_sums.get(k, 0) + acc.gather(v.float().reshape(1)).mean()
        if not acc.sync_gradients:  # pragma: no cover (the micro-batch loop always ends on a sync)
            raise RuntimeError("gradient accumulation out of step")
        self.lr_scheduler.step()
        for name, ema in self.emas.items():
            ema.step((self.unet if name == "unet" else self.rem).parameters())
        n = len(losses)
        loss = float(torch.stack(losses).sum().item()) / n
        terms = {k: float(v.item()) / n for k, v in term_sums.items()}
        return loss, terms

    def log(self, step: int, loss: float, terms: dict[str, float]) -> None:
        self._pending.append((loss, terms))
        if step % self.cfg.log_every and step != self.trainer.stop_step:
            return
        n = len(self._pending)
        values = {"train/loss": sum(p[0] for p in self._pending) / n,
                  "train/lr": self.lr_scheduler.get_last_lr()[0]}
        for key in self._pending[0][1]:
            values[f"train/loss_{key}"] = sum(p[1].get(key, math.nan) for p in self._pending) / n
        self._pending.clear()
        self.accelerator.log(values, step=step)


def train(config: TrainConfig, *, output_dir: Path | str | None = None, max_steps: int | None = None,
          resume: bool | str | Path = False, progress: bool = True) -> TrainResult:
    """Run `config` (see the module docstring). `resume`: True = the output folder's last checkpoint, or a
    checkpoint folder; `max_steps` stops the run at that global step (see `TrainConfig.max_steps`)."""
    return Trainer(config, output_dir=output_dir, max_steps=max_steps, resume=resume, progress=progress).run()


__all__ = ["TrainResult", "Trainer", "TrainingDivergedError", "list_checkpoints", "load_pipeline", "train"]
