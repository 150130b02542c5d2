"""The reference-edit pipelines, registered by name and imported only when asked for.

| name | what | default model |
|---|---|---|
| composition | Paint-by-Example: paint an example object into the region | paint-by-example |
| region_edit | Blended Latent Diffusion: edit the region from a text | sd15 |
| inpaint | removal: blended latents with a background prompt, or a 9-channel SD inpainting model | sd15 |
| classical_inpaint | removal with OpenCV (Telea / Navier-Stokes); no weights | opencv |

Each pipeline's `generate(image, mask, ...)` returns a list of `base.Candidate`. This module imports
only the standard library, so the CLI can list the names without loading torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from refcoco_edit.errors import InputError

# name -> "module:class"
PIPELINES: dict[str, str] = {
    "composition": "refcoco_edit.pipelines.composition:CompositionPipeline",
    "region_edit": "refcoco_edit.pipelines.region_edit:RegionEditPipeline",
    "inpaint": "refcoco_edit.pipelines.inpaint:InpaintPipeline",
    "classical_inpaint": "refcoco_edit.pipelines.classical_inpaint:ClassicalInpaintPipeline",
}


def pipeline_names() -> list[str]:
    return list(PIPELINES)


def pipeline_class(name: str) -> type:
    """The class registered as `name` (imports its module)."""
    if name not in PIPELINES:
        raise InputError(f"unknown pipeline {name!r}; known: {', '.join(PIPELINES)}")
    module, _, cls = PIPELINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_pipeline(
    name: str,
    model: str | None = None,
    overrides: Mapping[str, str] | None = None,
    device: Any = None,
    dtype: Any = None,
    **kwargs: Any,
):
    """A loaded pipeline. `model`: a resolver name (each pipeline has a default); `overrides`: resolver
    overrides (name -> path or Hub id); `device`: None picks CUDA when present; `dtype`: None picks
    float16 on CUDA and float32 on the CPU. Other keywords (`progress=False`) go to the class."""
    return pipeline_class(name)(model, overrides, device, dtype, **kwargs)
