"""RefShapes: a small synthetic referring-expression dataset in RefCOCO's REFER layout.

Flat coloured shapes on a textured background, referring expressions that provably single out their
object, and exact reference edits (replace, remove, recolour). It lets every part of the toolkit run
end to end without RefCOCO or COCO images. A 40-image copy ships with the package (`sample_root()`);
`generate` writes any size.
"""

from __future__ import annotations

from pathlib import Path

from refcoco_edit.refshapes.expressions import parse_expression, resolve_expression
from refcoco_edit.refshapes.generator import generate
from refcoco_edit.refshapes.geometry import COLOURS, HEIGHT, KINDS, WIDTH

SAMPLE_DATASET = "refshapes"
SAMPLE_SPLIT_BY = "unc"
SAMPLE_NUM_IMAGES = 40
SAMPLE_SEED = 0


def sample_root() -> Path:
    """Root folder of the committed sample (REFER's data_root): generate(sample_root(), 40, 0)."""
    return Path(__file__).resolve().parent.parent / "data" / "refshapes"


__all__ = ["COLOURS", "HEIGHT", "KINDS", "SAMPLE_DATASET", "SAMPLE_NUM_IMAGES", "SAMPLE_SEED",
           "SAMPLE_SPLIT_BY", "WIDTH", "generate", "parse_expression", "resolve_expression",
           "sample_root"]
