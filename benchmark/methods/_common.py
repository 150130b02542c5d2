"""Helpers shared by the diffusion methods: working sizes, devices and InstructPix2Pix loading.

Imported only by method modules when a method is used (torch and diffusers inside the functions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refcoco_edit.errors import InputError


def as_rgb(image: Any) -> Any:
    return image if image.mode == "RGB" else image.convert("RGB")


def working_image(image: Any, size: int | None) -> Any:
    """The source at the model's working size: the longer side `size` (the source's own size when
    None), each side rounded to a multiple of 8 (the VAE's factor)."""
    from PIL import Image

    from refcoco_edit.pipelines.base import working_size

    image = as_rgb(image)
    work = working_size(image.size, size)
    return image if work == image.size else image.resize(work, Image.Resampling.LANCZOS)


def back_to_source(image: Any, size: tuple[int, int]) -> Any:
    """A working-size result at the source's (width, height)."""
    from PIL import Image

    image = as_rgb(image)
    return image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)


def device_and_dtype(device: Any, dtype: Any) -> tuple[Any, Any]:
    from refcoco_edit.pipelines.base import resolve_device, resolve_dtype

    dev = resolve_device(device)
    return dev, resolve_dtype(dev, dtype)


def cpu_generator(seed: int) -> Any:
    """A CPU generator: the same noise on every device."""
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed))


def load_instruct_pix2pix(name: str, overrides: Mapping[str, str] | None, device: Any, dtype: Any, *,
                          progress: bool = False) -> Any:
    """A `StableDiffusionInstructPix2PixPipeline` from the resolver, without safety checker, with every
    component on `device` in `dtype` (whatever dtypes the folder holds), progress bar off; the
    libraries' loading bars and warnings only when `progress`."""
    from refcoco_edit.models.components import quiet_libraries
    from refcoco_edit.models.resolver import load_pretrained
    from refcoco_edit.pipelines.base import place

    def loader(src: str) -> Any:
        return StableDiffusionInstructPix2PixPipeline.from_pretrained(
            src, safety_checker=None, requires_safety_checker=False
        )

    with quiet_libraries(not progress):  # importing the pipeline already warns about torchvision
        from diffusers import StableDiffusionInstructPix2PixPipeline

        pipe = load_pretrained(name, loader, overrides)
    latent = pipe.vae.config.latent_channels
    if pipe.unet.config.in_channels != 2 * latent:
        raise InputError(
            f"model {name!r} has a {pipe.unet.config.in_channels}-channel UNet; an InstructPix2Pix-style "
            f"model has {2 * latent} (noisy latent + source latent)"
        )
    with quiet_libraries(not progress):  # diffusers warns on casts
        pipe = place(pipe, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
