"""What generation edits (the region: the object, its box, grown, or painted) and the example picture."""

from __future__ import annotations

from typing import Any

import numpy as np

from annotation_app.errors import StateError
from annotation_app.handlers.annotate.state import GROW_PX, REGION_KINDS, AnnotateState, need_pick, require_user
from annotation_app.handlers.annotate.views import object_mask, region_editor, shown_picture
from annotation_app.handlers.common import Choices, fresh
from annotation_app.render import STROKE_MODES, apply_strokes, box_mask, mask_from_editor


def set_region(ctx, username: str | None, state: AnnotateState | None, kind: str) -> tuple[AnnotateState, dict]:
    """The region to edit from the object: its mask ("object"), its box ("box") or the mask grown ("grow")."""
    from refcoco_edit.pipelines.base import dilate

    require_user(ctx, username)
    st = fresh(state, AnnotateState)
    need_pick(st)
    m = np.array(object_mask(ctx, st))
    if kind == "object":
        st.region = m
    elif kind == "box":
        st.region = box_mask(m)
    elif kind == "grow":
        st.region = dilate(m, GROW_PX)
    else:
        raise StateError(f"unknown region kind {kind!r}; use one of {', '.join(REGION_KINDS)}")
    return st, {"image": shown_picture(ctx, st), "region_editor": region_editor(ctx, st),
                "message": f"Region: the object's {'mask' if kind == 'object' else kind} ({int(st.region.sum())} px)."}


def painted_strokes(value: Any, size: tuple[int, int], mode: str) -> np.ndarray:
    from annotation_app.limits import check_decoded_layers

    if mode not in STROKE_MODES:
        raise StateError(f"unknown brush mode {mode!r}; use one of {', '.join(STROKE_MODES)}")
    if isinstance(value, dict):
        check_decoded_layers([lay for lay in (value.get("layers") or []) if lay is not None], "brush strokes")
    strokes = mask_from_editor(value, size)
    if strokes is None or not strokes.any():
        raise StateError("nothing was painted: paint with the brush first")
    return strokes


def region_from_editor(ctx, username: str | None, state: AnnotateState | None, value: Any, mode: str = "replace"
                       ) -> tuple[AnnotateState, dict]:
    """The region after brush strokes: they are the new region, or are added to or cut from the
    current one. Any shape is allowed, not only the object's."""
    require_user(ctx, username)
    st = fresh(state, AnnotateState)
    need_pick(st)
    m = apply_strokes(st.region, painted_strokes(value, ctx.image(st.image_id).size, mode), mode)
    if not m.any():
        raise StateError("the region would be empty: paint over the area to edit")
    if m.all():
        raise StateError("the region would cover the whole image: leave some of it unedited")
    st.region = m
    return st, {"image": shown_picture(ctx, st), "region_editor": region_editor(ctx, st),
                "message": f"Region: drawn ({int(m.sum())} px)."}


def use_upload(ctx, username: str | None, state: AnnotateState | None, path: Any, *,
               upload_root: Any) -> tuple[AnnotateState, dict]:
    """An uploaded picture of the substitute object (composition), checked and kept in the store's folder."""
    require_user(ctx, username)
    st = fresh(state, AnnotateState)
    need_pick(st)
    digest, image = ctx.uploads.add_file(path, upload_root=upload_root, max_bytes=ctx.config.max_upload_bytes,
                                         max_pixels=ctx.config.max_upload_pixels)
    st.example_hash, st.example_source = digest, "upload"
    return st, {"example": image, "message": f"Example: uploaded image {image.width}x{image.height}."}


def example_objects(ctx, username: str | None, category_id: Any, limit: int = 100) -> Choices:
    """Objects of one category (across the dataset) that can serve as the example."""
    require_user(ctx, username)
    try:
        cat = int(category_id)
    except (TypeError, ValueError):
        return Choices()
    out = []
    for ann in ctx.data.anns:
        if int(ann.get("category_id", -1)) == cat:
            out.append((f"object {ann['id']} (image {ann['image_id']})", int(ann["id"])))
            if len(out) >= limit:
                break
    return Choices(out, out[0][1] if out else None)


def use_example_object(ctx, username: str | None, state: AnnotateState | None, ann_id: Any
                       ) -> tuple[AnnotateState, dict]:
    """A crop of another object of the dataset as the example (composition)."""
    from refcoco_edit.pipelines.composition import crop_object

    require_user(ctx, username)
    st = fresh(state, AnnotateState)
    need_pick(st)
    try:
        ann = ctx.data.ann(int(ann_id))
    except (TypeError, ValueError):
        raise StateError("choose an example object first") from None
    if int(ann["id"]) == st.ann_id:
        raise StateError("the example must be another object than the source")
    crop = crop_object(ctx.image(int(ann["image_id"])), ctx.ann_mask(int(ann["id"])))
    st.example_hash, st.example_source = ctx.uploads.put(crop), f"object {ann['id']}"
    return st, {"example": crop, "message": f"Example: object {ann['id']}."}
