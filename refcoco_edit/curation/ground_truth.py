"""The RefShapes generator's exact edits (`<dataset>/edits.json`), read once per build.

On RefShapes every (ref, edit type) has a known right answer: the generator drew it. The build uses
it three ways: as the `synthetic` pipeline's candidate, as the target of replace and attribute edits
(so every pipeline aims at the same edit) and as the `oracle` auto-accept policy's reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refcoco_edit.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

    from refcoco_edit.refer.reader import RefCOCO

EDITS_FILE = "edits.json"


@dataclass
class GroundTruth:
    """The RefShapes generator's exact edits (`<dataset>/edits.json`), by (ref id, edit type)."""

    folder: Path
    edits: dict[tuple[int, str], dict]
    objects: dict[int, dict]  # ann id -> {"kind", "colour", ...}
    seed: int

    @classmethod
    def find(cls, data: RefCOCO) -> GroundTruth | None:
        """The ground truth beside the dataset's refs, or None when the folder has no edits.json."""
        from refcoco_edit.refer.reader import load_json

        path = cls.path_of(data)
        if not path.is_file():
            return None
        raw = load_json(path, "RefShapes edits file")
        if not isinstance(raw, dict) or not isinstance(raw.get("edits"), list):
            raise DataError(f"{path}: not a RefShapes edits file (no 'edits' list)")
        edits: dict[tuple[int, str], dict] = {}
        for rec in raw["edits"]:
            try:
                edits[(int(rec["ref_id"]), str(rec["edit_type"]))] = rec
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}: an edit lacks ref_id or edit_type") from None
        objects = {int(k): v for k, v in (raw.get("objects") or {}).items() if isinstance(v, dict)}
        return cls(path.parent, edits, objects, int(raw.get("seed", 0) or 0))

    @staticmethod
    def path_of(data: RefCOCO) -> Path:
        """Where `find` looks for the ground truth of `data`."""
        return Path(data.source) / EDITS_FILE

    def edit(self, ref_id: int, edit_type: str) -> dict:
        rec = self.edits.get((int(ref_id), edit_type))
        if rec is None:
            raise DataError(f"{self.folder / EDITS_FILE} has no {edit_type} edit of ref {ref_id}")
        return rec

    def edited_image(self, rec: dict) -> Image:
        from refcoco_edit.imaging.files import open_image
        from refcoco_edit.refer.reader import member_path

        name = rec.get("edited_file")
        if not name:
            raise DataError(f"edit {rec.get('edit_id')} of ref {rec.get('ref_id')} has no edited image "
                            "(the dataset was generated without images)")
        return open_image(member_path(self.folder, name, f"{self.folder / EDITS_FILE}: edit {rec.get('edit_id')}"))

    def edit_mask(self, rec: dict[str, Any], height: int, width: int) -> np.ndarray:
        from refcoco_edit.refer.reader import decode_segmentation

        return decode_segmentation(rec.get("edit_mask"), height, width, f"ground-truth edit {rec.get('edit_id')}")
