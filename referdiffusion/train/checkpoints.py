"""The run's folder on disk: frozen components, checkpoints (write, rotate, find, read back) and final/.

    OUT/frozen_components/    vae, text_encoder, tokenizer, scheduler, model_index.json: written once,
                              hard-linked (or copied) into each checkpoint
    OUT/training_manifest.json  the pictures the run trains on (`manifest`), copied into each checkpoint
                              and final/ so that an evaluation of any of them can check for overlap
    OUT/checkpoint-<step>/    a ReferDiffusionPipeline folder plus training_state/ (accelerate) and
                              trainer_state.json; with EMA on, ema/unet and ema/rem
    OUT/final/                the pipeline at the end of the run (EMA weights when EMA is on)

Every folder is filled under a temporary name (`refcoco_edit.io.atomic_dir`) and renamed into place, so
a folder with the final name is complete; `remove_leftovers` clears what a killed run left. The trained
weights are saved once, in diffusers format: accelerate's own model files are skipped
(`skip_accelerate_model_files`) and resuming reads the weights back from the checkpoint's unet/ and rem/.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refcoco_edit.errors import InputError, ModelNotAvailableError
from refcoco_edit.io import atomic_dir, dumps
from referdiffusion.train.config import TrainConfig, config_to_dict, flat_dict
from referdiffusion.train.manifest import MANIFEST

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import EMAModel

    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.rem import RegionEmbedder
    from referdiffusion.train.state import TrainState

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE = "training_state"
FROZEN = "frozen_components"
FINAL = "final"
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.yaml"
FROZEN_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler")
# Settings that may change between a run and its resumption without changing what is computed.
RESUME_SAFE_KEYS = {"max_steps", "output_dir", "log_every", "report_to", "checkpointing_steps",
                    "checkpoints_total_limit", "data.num_workers"}
# Temporary names of the run's folders: `atomic_dir` makes `.<name>.<random>.tmp`, earlier versions of the
# trainer made `.<name>.tmp`.
_LEFTOVERS = (f".{CHECKPOINT_PREFIX}*.tmp", f".{FROZEN}.*tmp", f".{FINAL}.*tmp")


# ---------------------------------------------------------------------------------------------
# finding checkpoints


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


def resume_point(output_dir: Path, resume: bool | str | Path) -> Path | None:
    """The checkpoint a run continues from: None for a new run (refused when `output_dir` already holds
    checkpoints), the last one for `resume=True`, or the folder `resume` names."""
    if not resume:
        if list_checkpoints(output_dir):
            raise InputError(f"{output_dir} already holds checkpoints of a run: pass --resume to continue "
                             "it, or choose another --output")
        return None
    if resume is not True:
        ckpt = Path(resume).expanduser().absolute()
        if not (ckpt / TRAINER_STATE).is_file():
            raise InputError(f"{ckpt} is not a checkpoint of this trainer (no {TRAINER_STATE})")
        return ckpt
    found = list_checkpoints(output_dir)
    if not found:
        log.warning("--resume: no checkpoint in %s, starting a new run", output_dir)
        return None
    return found[-1]


def check_resumed_config(output_dir: Path, config: TrainConfig) -> None:
    """Warn when the config differs from the one the run started with in a setting that changes results."""
    import yaml

    saved_path = output_dir / CONFIG
    if not saved_path.is_file():
        return
    saved = flat_dict(yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {})
    now = flat_dict(config_to_dict(config))
    changed = sorted(k for k in set(saved) | set(now)
                     if saved.get(k) != now.get(k) and k not in RESUME_SAFE_KEYS)
    if changed:
        log.warning("resuming with a changed config (%s): the result will differ from an uninterrupted run",
                    ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed))


def remove_leftovers(output_dir: Path) -> None:
    """Remove the temporary folders a killed run left in `output_dir` (main process, before anything is
    written)."""
    for pattern in _LEFTOVERS:
        for stale in output_dir.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
            log.info("removed %s, left by an interrupted run", stale)


# ---------------------------------------------------------------------------------------------
# writing


@contextmanager
def _replacing(dest: Path) -> Iterator[Path]:
    """A temporary folder that becomes `dest`; an earlier `dest` goes only once the new one is complete."""
    with atomic_dir(dest) as tmp:
        yield tmp
        shutil.rmtree(dest, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def write_frozen(output_dir: Path, pipe: ReferDiffusionPipeline) -> None:
    """The parts no step changes, once: model_index.json, vae, text_encoder, tokenizer, scheduler."""
    with _replacing(output_dir / FROZEN) as tmp:
        pipe.save_config(tmp)
        for name in FROZEN_PARTS:
            getattr(pipe, name).save_pretrained(tmp / name)


def _write_pipeline(output_dir: Path, folder: Path, unet: UNet2DConditionModel, rem: RegionEmbedder) -> None:
    frozen = output_dir / FROZEN
    shutil.copy2(frozen / "model_index.json", folder / "model_index.json")
    for name in FROZEN_PARTS:
        shutil.copytree(frozen / name, folder / name, copy_function=_link_or_copy)
    unet.save_pretrained(folder / "unet")
    rem.save_pretrained(folder / "rem")
    if (output_dir / MANIFEST).is_file():
        shutil.copy2(output_dir / MANIFEST, folder / MANIFEST)


class _ema_weights:
    """Context: `module` holds the EMA's averaged weights inside, its own weights again after (exactly)."""

    def __init__(self, ema: EMAModel | None, module: torch.nn.Module) -> None:
        self.ema, self.module = ema, module

    def __enter__(self) -> None:
        if self.ema is not None:
            self.ema.store(self.module.parameters())
            self.ema.copy_to(self.module.parameters())

    def __exit__(self, *exc: Any) -> None:
        if self.ema is not None:
            self.ema.restore(self.module.parameters())


def _shared_path(accelerator: Accelerator, path: Path | None) -> Path:
    """The main process's `path`, on every process."""
    from accelerate.utils import broadcast_object_list

    return Path(broadcast_object_list([str(path) if path is not None else None])[0])


def save_checkpoint(state: TrainState, output_dir: Path, stage: str) -> Path:
    """Write OUT/checkpoint-<global_step> and drop the oldest beyond `checkpoints_total_limit`. Every
    process takes part (accelerate saves each one's RNG states into the same folder)."""
    acc, step = state.accelerator, state.global_step
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    acc.wait_for_everyone()
    with (_replacing(final) if acc.is_main_process else nullcontext(None)) as made:
        tmp = _shared_path(acc, made)
        if acc.is_main_process:
            _write_pipeline(output_dir, tmp, state.unet, state.rem)
            for name, ema in state.emas.items():
                module = state.module(name)
                with _ema_weights(ema, module):
                    module.save_pretrained(tmp / "ema" / name)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / TRAINING_STATE))
        acc.wait_for_everyone()
        if acc.is_main_process:
            info = {"global_step": step, "stage": stage, "config": state.config.name, "time": time.time()}
            (tmp / TRAINER_STATE).write_text(dumps(info, indent=2), encoding="utf-8")
    if acc.is_main_process:
        _rotate(output_dir, state.config.checkpoints_total_limit)
        log.info("saved %s", final)
    acc.wait_for_everyone()
    return final


def _rotate(output_dir: Path, keep: int | None) -> None:
    if keep is None:
        return
    found = list_checkpoints(output_dir)
    for old in found[: max(0, len(found) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
        log.info("removed old checkpoint %s", old)


def save_final(state: TrainState, output_dir: Path) -> Path:
    """Write OUT/final, the pipeline with the EMA weights when EMA is on."""
    acc = state.accelerator
    dest = output_dir / FINAL
    acc.wait_for_everyone()
    if acc.is_main_process:
        with _replacing(dest) as tmp, _ema_weights(state.emas.get("unet"), state.unet), \
                _ema_weights(state.emas.get("rem"), state.rem):
            _write_pipeline(output_dir, tmp, state.unet, state.rem)
    acc.wait_for_everyone()
    return dest


# ---------------------------------------------------------------------------------------------
# reading back


def skip_accelerate_model_files(accelerator: Accelerator) -> None:
    """Have `save_state`/`load_state` leave the model weights alone: this module saves and reads them."""

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        weights.clear()

    def load_hook(models: list, input_dir: str) -> None:
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _load_weights(module: torch.nn.Module, folder: Path) -> None:
    """Load a `save_pretrained` folder's safetensors weights (one file or shards) into `module`, strictly."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotAvailableError(f"no safetensors weights in {folder}")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(f)))
    module.load_state_dict(weights, strict=True)


def load_checkpoint(state: TrainState, folder: Path) -> None:
    """Put `state` where checkpoint `folder` left the run: weights, optimiser, schedule, EMA, RNG states."""
    saved = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    state.global_step = int(saved["global_step"])
    _load_weights(state.unet, folder / "unet")
    if state.trains_rem:
        _load_weights(state.rem, folder / "rem")
    state.accelerator.load_state(str(folder / TRAINING_STATE))
    for ema in state.emas.values():
        ema.to(state.accelerator.device)
    log.info("resumed from %s at step %d", folder, state.global_step)
