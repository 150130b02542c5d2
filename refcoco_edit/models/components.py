"""Putting loaded models into one state: every component in one dtype, Stable Diffusion's DDIM, quiet loads.

Why these live together: they are what goes wrong between "the checkpoint loaded" and "the first step
ran" on checkpoints as users have them.

- **One dtype** (`place_components`). A folder saved after `.to(torch.float16)` says `torch_dtype:
  float16` in some of its components' configs. diffusers loads its own models (UNet, VAE) in float32
  whatever the config says, while transformers 5 loads a text or image encoder in the dtype its config
  names ("auto"). The pipeline then holds float16 next to float32 and the first matrix product fails
  ("expected m1 and m2 to have the same dtype"). Casting the whole pipeline only when the UNet's dtype
  differs misses exactly this case. Every pipeline and method therefore places *every* torch module it
  holds in the dtype the user asked for (`--dtype`; float32 on the CPU by default) and on the device.
  A float16-saved component under float32 is exact: float16 values are float32 values.
- **Stable Diffusion's DDIM** (`sd_ddim_scheduler`). `DDIMScheduler.from_config(other.config)` fills
  the keys the source does not set with DDIM's own defaults, among them `clip_sample=True`, which clips
  the predicted latent to [-1, 1] and washes the image out (latents are not images). The conversion
  keeps every setting of the source that DDIM knows, fills `set_alpha_to_one=False` and
  `steps_offset=1` (Stable Diffusion's) where the source is silent, and always sets
  `clip_sample=False`.
- **Quiet loads** (`quiet_libraries`). diffusers, transformers and huggingface_hub draw their own
  progress bars ("Loading pipeline components", "Loading weights", downloads) and print warnings such
  as transformers' fallback from `CLIPImageProcessor` to its PIL twin when torchvision is absent. When
  the user asked for no progress, loading is run with those bars off and the libraries' logging at
  errors only; the previous settings come back afterwards.

torch and the libraries are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import DDIMScheduler

logger = logging.getLogger(__name__)

# Stable Diffusion's DDIM settings for keys a source scheduler does not set (see the module docstring).
SD_DDIM_DEFAULTS: dict[str, Any] = {"set_alpha_to_one": False, "steps_offset": 1}


# --------------------------------------------------------------------------------------------
# one dtype, one device


def torch_modules(obj: Any) -> dict[str, torch.nn.Module]:
    """The torch modules of a diffusers pipeline (its `components`), of a mapping of components, or
    the module itself (as {"": module})."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return {"": obj}
    items = obj.items() if isinstance(obj, Mapping) else getattr(obj, "components", {}).items()
    return {name: value for name, value in items if isinstance(value, torch.nn.Module)}


def module_dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    """The dtypes of a module's floating-point parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return {t.dtype for t in tensors if t.is_floating_point()}


def _devices(module: torch.nn.Module) -> set[Any]:
    return {t.device for t in (*module.parameters(), *module.buffers())}


def place_components(obj: Any, device: Any, dtype: torch.dtype) -> Any:
    """Every torch module of `obj` (a pipeline, a mapping of components, or a module) on `device` (None:
    each where it is), with all its floating-point weights in `dtype`; modules already there are left
    alone (diffusers warns on each cast). Returns `obj`, changed in place."""
    import torch

    device = torch.device(device) if device is not None else None
    for name, module in torch_modules(obj).items():
        wrong_dtype = module_dtypes(module) - {dtype}
        wrong_device = device is not None and any(not _same_device(d, device) for d in _devices(module))
        if wrong_dtype or wrong_device:
            logger.debug("placing %s (%s on %s) in %s on %s", name or type(module).__name__,
                         sorted(map(str, module_dtypes(module))), sorted(map(str, _devices(module))), dtype,
                         device or "its device")
            module.to(**({"device": device} if device is not None else {}), dtype=dtype)
    return obj


def _same_device(a: Any, b: Any) -> bool:
    """`cuda` and `cuda:0` are the same place when 0 is the current device."""
    import torch

    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        current = torch.cuda.current_device() if a.type == "cuda" and torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


def check_one_dtype(obj: Any) -> torch.dtype:
    """The one dtype all modules of `obj` share; ValueError naming the components when they differ."""
    found = {name or "module": module_dtypes(module) for name, module in torch_modules(obj).items()}
    dtypes = set().union(*found.values()) if found else set()
    if len(dtypes) != 1:
        detail = ", ".join(f"{n}: {'/'.join(sorted(str(d) for d in ds))}" for n, ds in found.items())
        raise ValueError(f"components are in more than one dtype ({detail})")
    return dtypes.pop()


# --------------------------------------------------------------------------------------------
# schedulers


def sd_ddim_scheduler(source: Any) -> DDIMScheduler:
    """A DDIM scheduler from a scheduler or its config: the source's settings that DDIM knows (noise
    schedule, prediction type, timestep spacing, ...), Stable Diffusion's defaults where the source is
    silent, and `clip_sample=False` always (see the module docstring)."""
    from diffusers import DDIMScheduler

    config = dict(getattr(source, "config", source))
    known = set(inspect.signature(DDIMScheduler.__init__).parameters) - {"self"}
    kept = {k: v for k, v in config.items() if k in known}
    if kept.get("clip_sample"):
        logger.info("the source scheduler clips samples; Stable Diffusion's latents must not be: clip_sample=False")
    return DDIMScheduler(**{**SD_DDIM_DEFAULTS, **kept, "clip_sample": False})


# --------------------------------------------------------------------------------------------
# quiet loading


@contextlib.contextmanager
def quiet_libraries(quiet: bool = True) -> Iterator[None]:
    """While active (and `quiet`), the progress bars of diffusers, transformers and huggingface_hub are
    off and their logging shows errors only; the settings before are restored on exit."""
    if not quiet:
        yield
        return
    from diffusers.utils import logging as dlog
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as tlog

    d_level, t_level = dlog.get_verbosity(), tlog.get_verbosity()
    d_bars, t_bars = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    hub_bars = not hub_utils.are_progress_bars_disabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        dlog.set_verbosity(d_level)
        tlog.set_verbosity(t_level)
        if d_bars:
            dlog.enable_progress_bar()
        if t_bars:
            tlog.enable_progress_bar()
        if hub_bars:
            hub_utils.enable_progress_bars()
