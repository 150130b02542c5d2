"""`reference`: the dataset's own edited image I_e. An upper bound: what a perfect method would
return, so its scores show how far each metric can go on this dataset.

Option `vae` (a resolver name, or a folder or Hub id holding an `AutoencoderKL`, or a pipeline folder
with a `vae/` subfolder) passes I_e through that VAE at the working size (`--size`, longer side; the
picture's own size without it) and back to the source's size, as a latent editor's output is made:
the ceiling of an editor that is perfect in latent space but decodes through that VAE at that size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.methods.base import Method
from refcoco_edit.errors import ModelNotAvailableError


def load_vae(source: str) -> Any:
    """An AutoencoderKL from a resolver name, a folder (its own, or a pipeline's `vae/`) or a Hub id."""
    from diffusers import AutoencoderKL

    from refcoco_edit.models.resolver import MODEL_SPECS, load_pretrained

    def loader(src: str) -> Any:
        sub = Path(src) / "vae"
        if sub.is_dir():
            return AutoencoderKL.from_pretrained(str(sub))
        return AutoencoderKL.from_pretrained(src)

    if source in MODEL_SPECS:
        return load_pretrained(source, loader)
    try:
        return loader(source)
    except (OSError, ValueError) as exc:  # a missing folder, a bad Hub id, a folder without a VAE
        raise ModelNotAvailableError(f"option vae={source!r}: no AutoencoderKL there ({exc})") from None


class ReferenceMethod(Method):
    name = "reference"
    description = "returns the dataset's reference edit I_e (upper bound); vae=NAME: through that VAE"
    reads = ("edited_image",)
    option_defaults = {"vae": ""}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vae: Any = None

    def setup(self) -> None:
        if not self.options["vae"]:
            return
        from benchmark.methods._common import device_and_dtype
        from refcoco_edit.models.components import quiet_libraries

        self.device, self.dtype = device_and_dtype(self.device, self.dtype)
        vae = load_vae(str(self.options["vae"]))
        with quiet_libraries(not self.progress):  # diffusers warns on casts
            self.vae = vae.to(device=self.device, dtype=self.dtype).eval()

    def edit(self, sample: Any, *, seed: int) -> Any:
        image = sample.edited_image
        image = image.convert("RGB") if image.mode != "RGB" else image.copy()
        if self.vae is None:
            return image
        return self._round_trip(image)

    def _round_trip(self, image: Any) -> Any:
        import numpy as np
        import torch
        from PIL import Image

        from benchmark.methods._common import back_to_source, working_image
        from refcoco_edit.pipelines.region_edit import decode_latents, encode_source

        with torch.no_grad():
            latents = encode_source(self.vae, working_image(image, self.size), self.device, self.dtype)
            decoded = decode_latents(self.vae, latents)[0]
        out = Image.fromarray((decoded * 255.0).round().astype(np.uint8))
        return back_to_source(out, image.size)
