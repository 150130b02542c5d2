"""The shared base of the diffusion pipelines: loading through the resolver, device and dtype,
progress, the request mapping and the provenance record each candidate carries.

A subclass says how to load its model (`load`) and, when it is built from something already loaded,
how to use that (`prepare`); everything else about construction is the same for all of them, and so
is the shape of the record of how a candidate was made (`record`). Only the standard library and
`base` (numpy) are imported here; torch and diffusers when a pipeline is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from refcoco_edit.pipelines.base import (
    Candidate,
    dtype_name,
    finish_candidates,
    place,
    quiet_progress,
    resolve_device,
    resolve_dtype,
)
from refcoco_edit.pipelines.capabilities import EditPipeline, EditRequest, given

if TYPE_CHECKING:
    from PIL.Image import Image

    from refcoco_edit.pipelines.base import PreparedInputs


class DiffusionEditPipeline(EditPipeline):
    """A pipeline on a diffusers model: `model` (resolver name, the class's default when None),
    `overrides` (resolver overrides), `device` (None: CUDA when present), `dtype` (None: float16 on
    CUDA, float32 on the CPU; every component is placed in it), `progress` (the denoising progress bar,
and the libraries' bars and warnings while loading). `pipe`: an already loaded
    model to use instead of loading one; it is used where it is unless `device`/`dtype` say otherwise.
    """

    def __init__(
        self,
        model: str | None = None,
        overrides: Mapping[str, str] | None = None,
        device: Any = None,
        dtype: Any = None,
        *,
        progress: bool = True,
        pipe: Any = None,
    ) -> None:
        self.model = model or self.default_model
        self.overrides = dict(overrides or {})
        if pipe is not None:  # given: work where it is unless told otherwise
            unet = self.unet_of(pipe)
            device = device if device is not None else unet.device
            dtype = dtype if dtype is not None else unet.dtype
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.progress = progress
        from refcoco_edit.models.components import quiet_libraries

        with quiet_libraries(not progress):  # the libraries' own bars and load warnings follow `progress`
            loaded = pipe if pipe is not None else self.load(self.model, self.overrides)
            self.pipe = self.prepare(loaded)
        self.model_folder = self._folder(pipe)
        quiet_progress(self.pipe, progress)

    def _folder(self, given: Any) -> str | None:
        """The folder the weights were read from (absolute, links resolved) for the record: what the
        resolver gave for the model name, or a given pipeline's own origin (None when it has none)."""
        from refcoco_edit.errors import ModelNotAvailableError
        from refcoco_edit.models.resolver import model_folder, resolve

        if given is not None:
            origin = getattr(getattr(given, "config", None), "_name_or_path", None)
            return model_folder(str(origin)) if origin else None
        try:
            return model_folder(resolve(self.model, self.overrides, build=False).source)
        except ModelNotAvailableError:
            return None

    # ---------------------------------------------------------------- what subclasses provide
    @staticmethod
    def unet_of(loaded: Any) -> Any:
        """The UNet of what `load` returns (or a caller gives): where it is says where to work."""
        return loaded.unet

    def load(self, name: str, overrides: Mapping[str, str]) -> Any:
        """The model named `name`, loaded through the resolver (not yet on the device)."""
        raise NotImplementedError

    def prepare(self, loaded: Any) -> Any:
        """The diffusers pipeline that runs, from what `load` returned: by default `loaded` itself,
        on the device in the dtype."""
        return place(loaded, self.device, self.dtype)

    # ---------------------------------------------------------------- requests and records
    @classmethod
    def generate_kwargs(cls, request: EditRequest) -> dict[str, Any]:
        """The sampling options given, then the text options (text pipelines), the ranking model
        (ranking pipelines) and the example (example pipelines)."""
        kwargs = {"num": request.num, "seed": request.seed}
        kwargs.update(given(steps=request.steps, size=request.size, guidance_scale=request.guidance_scale,
                            feather=request.feather, restore=request.restore))
        if cls.takes_text:
            kwargs["text"] = request.text
            kwargs.update(given(negative_prompt=request.negative_prompt, skip=request.skip))
        if cls.ranks and request.rank_by:
            kwargs["rank_by"] = request.rank_by
        if cls.needs_example:
            kwargs.update(example=request.example, example_source=request.example_source)
        return kwargs

    def record(
        self,
        prep: PreparedInputs,
        seeds: list[int],
        *,
        method: str,
        sent: Mapping[str, Any],
        steps: int,
        guidance_scale: float,
        size: int | None,
        restore: bool,
        feather: int,
        sampling: Mapping[str, Any] | None = None,
        blending: Mapping[str, Any] | None = None,
        pipeline: str | None = None,
    ) -> dict[str, Any]:
        """How the candidates were made (JSON): what the model was sent (`sent`: the prompt or the
        example), the sampler's settings (`sampling`: beyond steps and guidance), how the result was
        blended (`blending`), the sizes, the restore, the seeds and where it ran."""
        w, h = prep.work_size
        return {
            "pipeline": pipeline or self.name,
            "method": method,
            "model": self.model,
            "model_folder": self.model_folder,
            **sent,
            "steps": steps,
            "guidance_scale": float(guidance_scale),
            **(sampling or {}),
            "scheduler": type(self.pipe.scheduler).__name__,
            **(blending or {}),
            "size": size,
            "work_size": [w, h],
            "source_size": list(prep.size),
            "restore": bool(restore),
            "feather": int(feather),
            "seeds": seeds,
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
        }

    def finish(self, prep: PreparedInputs, images: list[Image], seeds: list[int], record: dict[str, Any], *,
               restore: bool, feather: int) -> list[Candidate]:
        """Working-size images -> candidates at the source's size with M_e (see `base.finish_candidates`)."""
        return finish_candidates(prep, images, seeds, record, self.model, restore=restore, feather=feather)
