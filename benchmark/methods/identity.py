"""`identity`: the source image, unchanged. The floor of every edit metric and the ceiling of every
background metric (l2_bg = 0, localisation recall = 0)."""

from __future__ import annotations

from typing import Any

from benchmark.methods.base import Method


class IdentityMethod(Method):
    name = "identity"
    description = "returns the source image unchanged (lower bound)"
    reads = ("source_image",)

    def edit(self, sample: Any, *, seed: int) -> Any:
        image = sample.source_image
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
