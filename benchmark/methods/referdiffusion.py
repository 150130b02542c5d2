"""`referdiffusion`: the toolkit's own method, a ReferDiffusion checkpoint (`referdiffusion init` or
training) through `ReferDiffusionPipeline`.

It gets the whole referring prompt P as is (it is trained on RefCOCO-Edit prompts, so no instruction
suffix), the source at the working size (longer side 512 unless `--size`), the checkpoint's
scheduler (DDIM), InstructPix2Pix's guidance with its defaults (text 7.5, image 1.5) and 50 steps.
The REM's predicted mask of the referred object is compared with the dataset's and its IoU kept in
samples.jsonl (`mask_iou`), which tells referring errors from editing errors.

The checkpoint is a folder or a resolver name (`--method-model DIR`, `--method-model refshapes-referdiffusion`
for the one trained here on RefShapes), or the environment variable REFCOCO_EDIT_MODEL_REFERDIFFUSION.
Without `--size` it works at the size its training manifest records (512 without one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.methods.base import EditResult, Method
from refcoco_edit.errors import ModelNotAvailableError
from refcoco_edit.imaging.masks import mask_iou

ENV = "REFCOCO_EDIT_MODEL_REFERDIFFUSION"


class ReferDiffusionMethod(Method):
    name = "referdiffusion"
    description = "ReferDiffusion (InstructPix2Pix + Region-Embedder Module) on the referring prompt"
    reads = ("source_image", "prompt")
    default_steps = 50
    default_size = 512
    option_defaults = {"guidance_scale": 7.5, "image_guidance_scale": 1.5}

    def __init__(self, **kwargs: Any) -> None:
        model = kwargs.pop("model", None)
        # before the base class asks for the trained size, which the checkpoint's manifest records
        self.checkpoint = self._resolved(model or "referdiffusion", kwargs.get("overrides"))
        super().__init__(**kwargs)
        self.pipe: Any = None

    def _resolved(self, model: str, overrides: Any) -> str | None:
        """A folder given as is; a resolver name (`referdiffusion`: --model referdiffusion=DIR,
        $REFCOCO_EDIT_MODEL_REFERDIFFUSION or the models.yaml config; `refshapes-*`: the packaged folders)
        as the resolver finds it; None when it finds none (availability() then says how to set one)."""
        from refcoco_edit.models.resolver import MODEL_SPECS, resolve

        if model not in MODEL_SPECS:
            return model
        try:
            return resolve(model, overrides, build=False).source
        except ModelNotAvailableError as exc:
            self._unresolved = str(exc)
            return None

    def _model_folder(self) -> str | None:
        folder = Path(self.checkpoint).expanduser() if self.checkpoint else None
        return str(folder) if folder is not None and folder.is_dir() else None

    def availability(self) -> str | None:
        if not self.checkpoint:
            why = getattr(self, "_unresolved", "")
            if why and "has no default source" not in why:
                return why  # a path was set but does not exist: say where it came from
            return (f"no ReferDiffusion checkpoint: pass --method-model DIR, --model referdiffusion=DIR or set "
                    f"{ENV}=DIR (make one with `referdiffusion init`)")
        folder = Path(self.checkpoint).expanduser()
        if not (folder / "model_index.json").is_file():
            return (f"{folder} is not a ReferDiffusion checkpoint (no model_index.json); "
                    "make one with `referdiffusion init`")
        return None

    def weights(self) -> str | None:
        return None if self.availability() else str(Path(self.checkpoint).expanduser().resolve())

    def setup(self) -> None:
        from benchmark.methods._common import device_and_dtype
        from refcoco_edit.models.components import quiet_libraries
        from refcoco_edit.pipelines.base import place

        self.device, self.dtype = device_and_dtype(self.device, self.dtype)
        folder = Path(self.checkpoint).expanduser()
        with quiet_libraries(not self.progress):  # importing diffusers' pipelines already warns
            from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline

            try:
                pipe = ReferDiffusionPipeline.from_pretrained(folder)
            except (OSError, ValueError) as exc:
                raise ModelNotAvailableError(f"cannot load ReferDiffusion checkpoint {folder}: "
                                             f"{type(exc).__name__}: {exc}") from exc
            self.pipe = place(pipe, self.device, self.dtype)  # every component, whatever dtypes were saved
        self.pipe.set_progress_bar_config(disable=True)

    def config(self) -> dict[str, Any]:
        out = super().config()
        # the folder actually read: absolute, links resolved (not the relative path typed)
        out["model"] = str(Path(self.checkpoint).expanduser().resolve()) if self.checkpoint else None
        return out

    def label(self) -> str:
        return self.name

    def edit(self, sample: Any, *, seed: int) -> Any:
        from PIL import Image

        from benchmark.methods._common import back_to_source, cpu_generator, working_image

        source = sample.source_image
        out = self.pipe(
            sample.prompt,
            image=working_image(source, self.size),
            num_inference_steps=self.steps,
            guidance_scale=float(self.options["guidance_scale"]),
            image_guidance_scale=float(self.options["image_guidance_scale"]),
            generator=cpu_generator(seed),
        )
        info: dict[str, Any] = {}
        if sample.source_mask is not None:
            predicted = np.asarray(out.masks[0].resize(source.size, Image.Resampling.NEAREST)) > 127
            info["mask_iou"] = mask_iou(predicted, sample.source_mask)
        return EditResult(back_to_source(out.images[0], source.size), info)
