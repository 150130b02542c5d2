"""ReferDiffusion training: config (`config`), data (`data`, `sample_data`) and the loop (`trainer`).

    from referdiffusion.train import load_config, train
    result = train(load_config("tiny"), output_dir="runs/tiny")

Light at import: torch, diffusers and accelerate load when `train` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from referdiffusion.train.config import ConfigError, TrainConfig, load_config, shipped_names

if TYPE_CHECKING:
    from referdiffusion.train.trainer import TrainResult

__all__ = ["ConfigError", "TrainConfig", "load_config", "shipped_names", "train"]


def train(*args: Any, **kwargs: Any) -> TrainResult:
    """`referdiffusion.train.trainer.train` (imported on first use)."""
    from referdiffusion.train.trainer import train as _train

    return _train(*args, **kwargs)
