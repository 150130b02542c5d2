"""`reference`: the dataset's own edited image I_e. An upper bound: what a perfect method would
return, so its scores show how far each metric can go on this dataset."""

from __future__ import annotations

from typing import Any

from benchmark.methods.base import Method


class ReferenceMethod(Method):
    name = "reference"
    description = "returns the dataset's reference edit I_e (upper bound)"
    reads = ("edited_image",)

    def edit(self, sample: Any, *, seed: int) -> Any:
        image = sample.edited_image
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
