"""`synthetic`: the RefShapes generator's exact edit as a build pipeline.

It declares its capabilities like the model pipelines (`refcoco_edit.pipelines`), so the build treats
it as one of them: it makes the edits the generator drew, needs no weights and no region (the edit's
region comes with the ground truth), and its one candidate is the ground truth itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from refcoco_edit.errors import DataError
from refcoco_edit.pipelines.capabilities import EditPipeline, EditRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from refcoco_edit.curation.ground_truth import GroundTruth
    from refcoco_edit.pipelines.base import Candidate

NAME = "synthetic"


class SyntheticPipeline(EditPipeline):
    """The `synthetic` pipeline: the generator's exact edit as the one candidate."""

    name = NAME
    label = "RefShapes ground truth (exact, no model)"
    edit_types = ("replace", "remove", "attribute")
    default_model = "refshapes"
    needs_weights = False
    needs_mask = False
    needs_ground_truth = True

    def __init__(self, gt: GroundTruth) -> None:
        self.gt = gt
        self.model = self.default_model

    @classmethod
    def generate_kwargs(cls, request: EditRequest) -> dict[str, Any]:
        """Which edit: the ref and the edit type (one exact candidate, no seed)."""
        return {"ref_id": request.ref_id, "edit_type": request.edit_type}

    def generate(self, image: Image, mask: Any, *, ref_id: int, edit_type: str, **_: Any) -> list[Candidate]:
        from refcoco_edit.imaging.masks import keep_background
        from refcoco_edit.pipelines.base import Candidate

        rec = self.gt.edit(ref_id, edit_type)
        edited = self.gt.edited_image(rec)
        if edited.size != image.size:
            raise DataError(f"ground-truth edit {rec.get('edit_id')} is {edited.size}, the source {image.size}")
        em = self.gt.edit_mask(rec, image.height, image.width)
        edited = keep_background(image, edited, em)  # exact already; kept so by construction
        params = {"pipeline": self.name, "method": "refshapes_ground_truth", "model": self.model,
                  "edit_id": rec.get("edit_id"), "edited_file": rec.get("edited_file"),
                  "edit_params": rec.get("params", {}), "generator_seed": self.gt.seed}
        return [Candidate(image=edited, seed=self.gt.seed, params=params, model=self.model, edit_mask=em)]
