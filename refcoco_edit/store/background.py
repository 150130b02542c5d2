"""The background invariant in the store: a sample's edited image equals its source outside M_e.

Where it is kept: every write that sets a sample's source image, edited image or edit mask
(`add_sample`, `update_sample`, `choose_candidate`) stores `keep_background(source, edited, M_e)`
instead of the edited image given, so a sample made by any pipeline, imported by hand or corrected
in the app satisfies it without its maker knowing. The store repairs rather than refuses because an
annotator who trims M_e with the brush means "this was not part of the edit": the source belongs
there, and nothing else could be done with the correction.

Which edited pixels a changed mask keeps: when only the mask changes and the sample's edited image is
its chosen candidate cut to the old mask (as `choose_candidate` stored it), the new mask cuts the
*candidate* again, so growing M_e brings back the candidate's pixels the old mask had left out (they
are what the annotator saw and painted over). Otherwise the stored edited image is cut.

Candidates are kept as their pipeline returned them: they are material to choose from, not samples.
Rows that arrived another way (an import of an older dump, a store edited by hand) are found by
`background_rows` (`refcoco-edit store check`) and repaired by `repair_background`
(`refcoco-edit store repair --background`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from refcoco_edit.errors import InputError, RefcocoEditError
from refcoco_edit.imaging.masks import background_changes, keep_background

if TYPE_CHECKING:
    import sqlite3

    from refcoco_edit.store.blobs import BlobStore

FIELDS = ("source_image", "edited_image", "edit_mask")


class Store(Protocol):
    """What this module reads of a store; `db.Store` has it."""

    blobs: BlobStore
    _conn: sqlite3.Connection


@dataclass
class BackgroundRow:
    """A sample whose edited image differs from its source at `pixels` pixels outside M_e."""

    sample_id: str
    status: str
    pixels: int

    def __str__(self) -> str:
        return f"sample {self.sample_id} ({self.status}): {self.pixels} pixels outside edit_mask differ from the source"


def _applies(source: Any, edited: Any, mask: Any) -> bool:
    """Whether the invariant can be kept by copying the source: all three present, of one size, and
    M_e not empty (an empty M_e beside a changed image is another error, which `schema.validate`
    and the export report; copying the source would silently turn the edit into a no-op)."""
    if source is None or edited is None or mask is None:
        return False
    size = getattr(source, "size", None)
    if size is None or getattr(edited, "size", None) != size:
        return False
    m = np.asarray(mask)
    return m.shape == (size[1], size[0]) and bool(m.any())


def for_new(values: dict[str, Any]) -> None:
    """Make a new sample's field values keep the invariant (in place). Incomplete samples (a draft
    without an edited image or a mask), sizes that disagree and an empty M_e (see `_applies`) are
    left as they are."""
    src, out, mask = (values.get(n) for n in FIELDS)
    if not _applies(src, out, mask):
        return
    values["edited_image"] = keep_background(src, out, mask)


def _chosen_candidate(store: Store, sample_id: str) -> Any:
    from refcoco_edit.store import rle

    row = store._conn.execute("SELECT image, edit_mask FROM candidates WHERE sample_id = ? AND chosen = 1 "
                              "ORDER BY candidate_id DESC LIMIT 1", (sample_id,)).fetchone()
    if row is None or not store.blobs.exists(row["image"]):
        return None
    return store.blobs.get(row["image"]), rle.from_json(row["edit_mask"])


def for_change(store: Store, before: Any, changes: dict[str, Any]) -> None:
    """Make a change of a stored sample (row `before`) keep the invariant, in place: when the change
    sets the source, the edited image or (to a different value) the mask, `changes["edited_image"]`
    becomes the edited image that keeps it (see the module docstring for which pixels are kept)."""
    from refcoco_edit.store import rle

    touched = [n for n in FIELDS if n in changes]
    if not touched:
        return
    if touched == ["edit_mask"] and before["edit_mask"] is not None and changes["edit_mask"] is not None:
        if rle.to_json(changes["edit_mask"]) == before["edit_mask"]:
            return  # the app sends M_e with every save; an unchanged mask needs no decoding
    try:
        old_mask = rle.from_json(before["edit_mask"])
        mask = changes["edit_mask"] if "edit_mask" in changes else old_mask
        src = changes["source_image"] if "source_image" in changes else (
            store.blobs.get(before["source_image"]) if before["source_image"] else None)
        if "edited_image" in changes:
            out = changes["edited_image"]
        else:
            out = store.blobs.get(before["edited_image"]) if before["edited_image"] else None
            if out is not None and src is not None and mask is not None and old_mask is not None \
                    and "source_image" not in changes:
                out = _candidate_base(store, before["sample_id"], src, out, old_mask)
    except RefcocoEditError:
        return  # a blob or mask that does not decode: `store check` reports it; nothing to keep here
    if not _applies(src, out, mask):
        return
    # Written even when it is the stored image: the same pixels give the same blob, and no change.
    changes["edited_image"] = keep_background(src, out, mask)


def _candidate_base(store: Store, sample_id: str, src: Any, edited: Any, old_mask: np.ndarray) -> Any:
    """The chosen candidate's image when the stored edited image is that candidate cut to the old
    mask, else the stored edited image."""
    found = _chosen_candidate(store, sample_id)
    if found is None:
        return edited
    image, _ = found
    if not _applies(src, image, old_mask):
        return edited
    cut = np.asarray(keep_background(src, image, old_mask).convert("RGB"))
    return image if np.array_equal(cut, np.asarray(edited.convert("RGB"))) else edited


def background_rows(store: Store) -> Iterator[BackgroundRow]:
    """Every sample (drafts included) whose edited image breaks the invariant, in sample id order.
    Samples without a source, an edited image or a mask, those whose sizes disagree and those with an
    empty M_e (which the store's rules and the export report as such) are skipped."""
    from refcoco_edit.store import rle

    rows = store._conn.execute(
        "SELECT sample_id, status, source_image, edited_image, edit_mask FROM samples WHERE error IS NULL AND "
        "source_image IS NOT NULL AND edited_image IS NOT NULL AND edit_mask IS NOT NULL AND "
        "source_image != edited_image ORDER BY source_image, sample_id").fetchall()
    cached: tuple[str, Any] = ("", None)
    found = []
    for row in rows:
        try:
            if cached[0] != row["source_image"]:  # samples of one picture share its decoded source
                cached = (row["source_image"], store.blobs.get(row["source_image"]))
            src, out = cached[1], store.blobs.get(row["edited_image"])
            mask = rle.from_json(row["edit_mask"])
            if not _applies(src, out, mask):
                continue
            n = background_changes(src, out, mask)
        except (RefcocoEditError, InputError):
            continue  # damaged rows are the store's rules' business
        if n:
            found.append(BackgroundRow(row["sample_id"], row["status"], n))
    yield from sorted(found, key=lambda r: r.sample_id)
