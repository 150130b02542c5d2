"""Test methods without weights, importable as "tests.benchmark.stub_methods:StampMethod" by a run in a
subprocess: deterministic outputs from the seed, an optional delay, and a log of every call."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmark.methods import EditResult, Method


class StampMethod(Method):
    """Paints the referred object's mask with a colour drawn from the sample's seed.

    Options: `delay` (seconds per sample, so a test can kill a run midway) and `log` (a file that gets
    one line "pid sample_id seed" per call to `edit`)."""

    name = "stamp"
    description = "test method: paints the ground-truth mask with a seeded colour"
    reads = ("source_image", "source_mask")
    option_defaults = {"delay": 0.0, "log": ""}

    def edit(self, sample: Any, *, seed: int) -> Any:
        if self.options["log"]:
            with Path(self.options["log"]).open("a", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {sample.sample_id} {seed}\n")
        if self.options["delay"]:
            time.sleep(float(self.options["delay"]))
        arr = np.asarray(sample.source_image.convert("RGB")).copy()
        colour = np.random.default_rng(seed).integers(0, 256, 3, dtype=np.uint8)
        arr[np.asarray(sample.source_mask).astype(bool)] = colour
        return EditResult(Image.fromarray(arr), {"colour": colour.tolist()})


class EmptySegmenter:
    """A referring segmenter that never finds the object (seg_inpaint must then return the source)."""

    name = "empty"
    reads = ("source_image",)

    def availability(self) -> str | None:
        return None

    def setup(self) -> None:
        pass

    def segment(self, sample: Any) -> np.ndarray:
        w, h = sample.source_image.size
        return np.zeros((h, w), np.uint8)
