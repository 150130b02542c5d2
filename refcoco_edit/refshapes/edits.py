"""Exact reference edits of a referred object: replace, remove, recolour.

The generator knows the background under every object, so each edit is exact: the edited image
equals the source outside the edit mask, to the pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refcoco_edit.refshapes import geometry as geo
from refcoco_edit.refshapes.scene import SceneObject, make_object

EDIT_TYPES = ("replace", "remove", "attribute")


@dataclass
class Edit:
    """One edit of one object. `new` is the object drawn in its place (None for remove)."""

    edit_type: str
    target: str
    params: dict
    old: SceneObject
    new: SceneObject | None
    mask_rle: dict = field(default_factory=dict)


def plan_edits(obj: SceneObject, rng: np.random.Generator) -> list[Edit]:
    """The three edits of a referred object, drawn in a fixed order (replace, remove, attribute)."""
    edits: list[Edit] = []
    # replace: another kind, another colour, or both; same centre and same area
    change = str(rng.choice(["kind", "colour", "both"], p=[0.25, 0.25, 0.5]))
    other_kinds = [k for k in geo.KINDS if k != obj.kind]
    other_colours = [c for c in geo.COLOURS if c != obj.colour]
    new_kind = str(rng.choice(other_kinds)) if change != "colour" else obj.kind
    new_colour = str(rng.choice(other_colours)) if change != "kind" else obj.colour
    new = make_object(new_kind, new_colour, obj.size, obj.nominal_area, obj.center)
    edits.append(Edit("replace", f"{new_colour} {new_kind}",
                      {"kind": new_kind, "colour": new_colour}, obj, new,
                      geo.union([obj.rle, new.rle])))
    edits.append(Edit("remove", "", {}, obj, None, obj.rle))
    recolour = str(rng.choice(other_colours))
    new = make_object(obj.kind, recolour, obj.size, obj.nominal_area, obj.center)
    edits.append(Edit("attribute", recolour, {"colour": recolour}, obj, new, obj.rle))
    return edits


def paint(image: np.ndarray, obj: SceneObject) -> None:
    """Paint an object's mask in its flat colour, in place."""
    image[geo.decode(obj.rle)] = geo.COLOURS[obj.colour]


def apply_edit(source: np.ndarray, bg: np.ndarray, edit: Edit) -> np.ndarray:
    """Edited copy of the source: old object replaced by background, new one painted on top."""
    out = source.copy()
    old = geo.decode(edit.old.rle)
    out[old] = bg[old]
    if edit.new is not None:
        paint(out, edit.new)
    return out
