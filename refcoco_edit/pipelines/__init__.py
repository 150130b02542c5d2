"""The reference-edit pipelines, registered by name and imported only when asked for.

| name | what | default model |
|---|---|---|
| composition | Paint-by-Example: paint an example object into the region | paint-by-example |
| region_edit | Blended Latent Diffusion: edit the region from a text | sd15 |
| inpaint | removal: blended latents with a background prompt, or a 9-channel SD inpainting model | sd15 |
| classical_inpaint | removal with OpenCV (Telea / Navier-Stokes); no weights | opencv |

Each pipeline's `generate(image, mask, ...)` returns a list of `base.Candidate`; what each can do
and needs is declared on its class (`capabilities.EditPipeline`). This module imports only the
standard library, so the CLI can list the names without loading torch; the pipeline modules import
numpy at most, so reading a class's declaration does not load torch either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refcoco_edit.pipelines.capabilities import EditPipeline, check_pipeline_class
from refcoco_edit.registry import Registry
from refcoco_edit.schema import PIPELINE_CLASSES

# the table is schema.PIPELINE_CLASSES, beside the `pipeline` field whose values it names
PIPELINES: Registry[type[EditPipeline]] = Registry("pipeline", PIPELINE_CLASSES, check=check_pipeline_class)


def pipeline_names() -> list[str]:
    return PIPELINES.names()


def pipeline_class(name: str) -> type[EditPipeline]:
    """The class registered as `name` (imports its module; its capabilities are class attributes)."""
    return PIPELINES.load(name)


def get_pipeline(
    name: str,
    model: str | None = None,
    overrides: Mapping[str, str] | None = None,
    device: Any = None,
    dtype: Any = None,
    **kwargs: Any,
) -> EditPipeline:
    """A loaded pipeline. `model`: a resolver name (each pipeline has a default); `overrides`: resolver
    overrides (name -> path or Hub id); `device`: None picks CUDA when present; `dtype`: None picks
    float16 on CUDA and float32 on the CPU. Other keywords (`progress=False`) go to the class."""
    return pipeline_class(name)(model, overrides, device, dtype, **kwargs)
