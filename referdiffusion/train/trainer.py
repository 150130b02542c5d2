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
    OUT/training_manifest.json      the pictures the stages' datasets hold (ids, content hashes) and the
                                    image protocol (`manifest`); copied into every checkpoint and final/
    OUT/frozen_components/          vae, text_encoder, tokenizer, scheduler (DDIM), model_index.json: written
                                    once, hard-linked (or copied) into each checkpoint
    OUT/checkpoint-<step>/          a ReferDiffusionPipeline folder (`from_pretrained` loads it) with the
                                    trained unet and rem, plus training_state/ (accelerate: optimiser, LR
                                    schedule, RNG states, EMA, scaler), trainer_state.json, and with EMA
                                    on, ema/unet and ema/rem (the averaged weights)
    OUT/final/                      the pipeline at the end of the run (EMA weights when EMA is on)
    OUT/logs/                       tracker logs (TensorBoard by default)

Checkpoints are complete or absent (see `checkpoints`); only the last `checkpoints_total_limit` are
kept. DeepSpeed and FSDP are not supported (their sharded states need accelerate's own model files).

The pieces: `state` (the models, optimiser, schedule and EMA a run holds, and building them), `step`
(one optimiser step), `checkpoints` (the run's folder on disk), `data` (a stage's batches); this module
orders them: set-up, the stages, logging and saving.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from refcoco_edit.errors import InputError, RefcocoEditError
from referdiffusion.train.checkpoints import (
    FROZEN,
    check_resumed_config,
    list_checkpoints,
    load_checkpoint,
    remove_leftovers,
    resume_point,
    save_checkpoint,
    save_final,
    skip_accelerate_model_files,
    write_frozen,
)
from referdiffusion.train.config import TrainConfig, config_to_dict, dump_config, flat_dict
from referdiffusion.train.manifest import MANIFEST, build_manifest, write_manifest
from referdiffusion.train.step import NonFiniteLoss, TrainStep

if TYPE_CHECKING:
    from accelerate import Accelerator
    from tqdm import tqdm

    from referdiffusion.train.config import StageConfig
    from referdiffusion.train.state import TrainState

log = logging.getLogger(__name__)

TRACKER_PROJECT = "referdiffusion"


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
class TrainResult:
    """What a call of `train` did (the same on every process)."""

    output_dir: Path
    global_step: int
    losses: list[float] = field(default_factory=list)  # mean loss of each optimiser step of this call
    terms: list[dict[str, float]] = field(default_factory=list)  # and of each term, unweighted
    checkpoints: list[Path] = field(default_factory=list)  # those on disk at the end
    final: Path | None = None
    resumed_from: Path | None = None


def _trackers(report_to: str) -> list[str]:
    import importlib.util

    names = [t.strip() for t in report_to.split(",") if t.strip() and t.strip() != "none"]
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        log.warning("tensorboard is not installed (pip install 'refcoco-edit[train]'); training without it")
        names.remove("tensorboard")
    return names


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
        self._unlogged: list[tuple[float, dict[str, float]]] = []  # steps since the last tracker entry
        self._saved_step: int | None = None  # the step of the last checkpoint this run wrote or resumed from

    def run(self) -> TrainResult:
        from refcoco_edit.models.components import quiet_libraries

        with quiet_libraries(not self.progress):  # no loading or saving bars from the libraries
            return self._run_with_accelerator()

    def _run_with_accelerator(self) -> TrainResult:
        from accelerate.state import AcceleratorState, GradientState

        resume_from = resume_point(self.output_dir, self.resume)
        if resume_from is not None:
            check_resumed_config(self.output_dir, self.config)
        accelerator = self._accelerator()
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

    def _accelerator(self) -> Accelerator:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        cfg = self.config
        return Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision,
            log_with=_trackers(cfg.report_to) or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused_parameters)],
        )

    def _run(self, accelerator: Accelerator, resume_from: Path | None) -> TrainResult:
        from tqdm.auto import tqdm

        state = self._setup(accelerator, resume_from)
        result = TrainResult(output_dir=self.output_dir, global_step=state.global_step, resumed_from=resume_from)
        bar = tqdm(total=self.stop_step, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (accelerator.is_main_process and self.progress))
        try:
            step = TrainStep(state)
            stage_start = 0
            for stage_index, stage in enumerate(self.config.stages):
                stage_end = stage_start + stage.max_steps
                if state.global_step < min(stage_end, self.stop_step):
                    self._run_stage(state, step, stage, stage_index, stage_start, result, bar)
                stage_start = stage_end
            if self._saved_step != state.global_step:
                save_checkpoint(state, self.output_dir, self._stage_at(state.global_step - 1))
            result.final = save_final(state, self.output_dir)
        except NonFiniteLoss as exc:
            last = (list_checkpoints(self.output_dir) or [None])[-1]
            raise TrainingDivergedError(exc.step, exc.stage, exc.value, exc.sample_ids, last) from None
        finally:
            bar.close()
        accelerator.wait_for_everyone()
        result.global_step = state.global_step
        result.checkpoints = list_checkpoints(self.output_dir)
        return result

    # -- set-up -------------------------------------------------------------------------------
    def _setup(self, accelerator: Accelerator, resume_from: Path | None) -> TrainState:
        """Seed, the output folder, the state at step 0 and, when resuming, the checkpoint's; the trackers."""
        from accelerate.utils import set_seed

        from referdiffusion.train.state import build_state, load_pipeline, token_length

        cfg = self.config
        main = accelerator.is_main_process
        set_seed(cfg.seed)
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.output_dir)
        pipe = load_pipeline(cfg)
        max_length = token_length(cfg, pipe)
        # A new run writes them afresh: a folder left by a run that died before its first checkpoint may
        # hold another model's VAE and text encoder. A resumed run keeps what its checkpoints link to.
        if main and (resume_from is None or not (self.output_dir / FROZEN / "model_index.json").is_file()):
            write_frozen(self.output_dir, pipe)
        if main and resume_from is None:
            dump_config(cfg, self.output_dir / "config.yaml")
        if main and (resume_from is None or not (self.output_dir / MANIFEST).is_file()):
            write_manifest(self.output_dir / MANIFEST, build_manifest(cfg))
        state = build_state(cfg, accelerator, pipe, max_length)
        skip_accelerate_model_files(accelerator)
        if resume_from is not None:
            load_checkpoint(state, resume_from)
            self._saved_step = state.global_step
        accelerator.init_trackers(TRACKER_PROJECT, config=flat_dict(config_to_dict(cfg)))
        return state

    # -- the stages ---------------------------------------------------------------------------
    def _run_stage(self, state: TrainState, step: TrainStep, stage: StageConfig, stage_index: int,
                   stage_start: int, result: TrainResult, bar: tqdm) -> None:
        """The steps of `stage` from where the run is to the stage's end or the stop step."""
        from referdiffusion.train.data import stage_loader

        cfg = self.config
        stage_end = stage_start + stage.max_steps
        start_batch = (state.global_step - stage_start) * cfg.gradient_accumulation_steps
        loader = stage_loader(cfg, stage, stage_index, state.tokenizer, state.accelerator, start_batch)
        loss_config = cfg.stage_loss_config(stage)
        batches = iter(loader)
        log.info("stage %s: steps %d..%d on %s", stage.name, state.global_step + 1, stage_end, stage.dataset)
        while state.global_step < min(stage_end, self.stop_step):
            loss, terms = step(batches, stage.name, loss_config)
            state.global_step += 1
            result.losses.append(loss)
            result.terms.append(terms)
            self._log(state, loss, terms)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", stage=stage.name)
            if state.global_step % cfg.checkpointing_steps == 0:
                save_checkpoint(state, self.output_dir, stage.name)
                self._saved_step = state.global_step

    def _stage_at(self, step: int) -> str:
        """The stage that runs step `step` (0-based)."""
        start = 0
        for stage in self.config.stages:
            start += stage.max_steps
            if step < start:
                return stage.name
        return self.config.stages[-1].name

    # -- logging ------------------------------------------------------------------------------
    def _log(self, state: TrainState, loss: float, terms: dict[str, float]) -> None:
        """Every `log_every` steps (and at the stop step): the mean loss and terms since the last entry, and
        the learning rate."""
        step = state.global_step
        self._unlogged.append((loss, terms))
        if step % self.config.log_every and step != self.stop_step:
            return
        n = len(self._unlogged)
        values = {"train/loss": sum(p[0] for p in self._unlogged) / n,
                  "train/lr": state.lr_scheduler.get_last_lr()[0]}
        for key in self._unlogged[0][1]:
            values[f"train/loss_{key}"] = sum(p[1].get(key, math.nan) for p in self._unlogged) / n
        self._unlogged.clear()
        state.accelerator.log(values, step=step)


def train(config: TrainConfig, *, output_dir: Path | str | None = None, max_steps: int | None = None,
          resume: bool | str | Path = False, progress: bool = True) -> TrainResult:
    """Run `config` (see the module docstring). `resume`: True = the output folder's last checkpoint, or a
    checkpoint folder; `max_steps` stops the run at that global step (see `TrainConfig.max_steps`)."""
    return Trainer(config, output_dir=output_dir, max_steps=max_steps, resume=resume, progress=progress).run()


__all__ = ["TrainResult", "Trainer", "TrainingDivergedError", "train"]
