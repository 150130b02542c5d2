"""ReferDiffusion: InstructPix2Pix + Region-Embedder Module for referring image editing.

`from referdiffusion import ReferDiffusionPipeline, RegionEmbedder` works, but the heavy modules
(torch, diffusers) are imported only when one of these names is first used, so that `import referdiffusion`
and the `referdiffusion` CLI's `--help` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "ReferDiffusionPipeline": "referdiffusion.pipeline_referdiffusion",
    "ReferDiffusionPipelineOutput": "referdiffusion.pipeline_referdiffusion",
    "RegionEmbedder": "referdiffusion.rem",
    "RegionEmbedderOutput": "referdiffusion.rem",
    "LossConfig": "referdiffusion.losses",
    "compute_losses": "referdiffusion.losses",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # the names of _LAZY, for type checkers (ruff cannot read __all__ = list(_LAZY))
    from referdiffusion.losses import LossConfig, compute_losses  # noqa: F401
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline, ReferDiffusionPipelineOutput  # noqa: F401
    from referdiffusion.rem import RegionEmbedder, RegionEmbedderOutput  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'referdiffusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
