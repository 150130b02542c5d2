"""What a reference-edit pipeline declares about itself, and the request every caller fills in.

A pipeline class states on itself which edits it makes, what it needs and how a caller's request
becomes the keywords of its `generate` (as diffusers pipelines declare `_optional_components`), so
that the build, `refcoco-edit generate` and the annotation app read one declaration instead of each
switching on pipeline names. This module imports only the standard library: the declarations are
readable (for `--help`, listings and checks) without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class EditRequest:
    """What a caller has for one generation; None means "not given" (the pipeline's default).

    `text` is the edit text (what the region should show) or, for a removal, the background prompt;
    `example` an image of the substitute object; `ref_id` and `edit_type` name the edit when it is a
    known one (the RefShapes ground truth). The remaining fields are sampling options that only some
    pipelines take; each pipeline's `generate_kwargs` keeps those it understands.
    """

    num: int = 1
    seed: int = 0
    text: str | None = None
    example: Image | None = None
    example_source: str | None = None
    ref_id: int | None = None
    edit_type: str | None = None
    steps: int | None = None
    size: int | None = None
    guidance_scale: float | None = None
    feather: int | None = None
    restore: bool | None = None
    negative_prompt: str | None = None
    skip: float | None = None
    rank_by: str | None = None
    method: str | None = None
    radius: int | None = None
    dilate_px: int | None = None


def given(**values: Any) -> dict[str, Any]:
    """The keywords whose value is not None, in the order given."""
    return {k: v for k, v in values.items() if v is not None}


class EditPipeline:
    """The capabilities every pipeline class declares, and its default request mapping.

    `edit_types`: the edits it can make (replace, remove, attribute, add, other). `label`: how the
    annotation app names it. `default_model`: the resolver name loaded when none is given.
    `needs_weights`: False for a pipeline that loads no model (then `--pipeline-model` is refused).
    `takes_text` / `needs_text`: whether `generate` uses a text, and whether it cannot work without
    one (the text then describes the new content). `needs_example`: an example image of the
    substitute object is required. `needs_mask`: False when the pipeline knows its edit region itself
    (it is handed the object's mask). `needs_ground_truth`: its result is the dataset's exact ground
    truth (RefShapes), so it is built from that and always correct. `ranks`: candidates can be ranked
    by CLIP (`rank_by`).
    """

    name: ClassVar[str]
    label: ClassVar[str] = ""
    edit_types: ClassVar[tuple[str, ...]] = ()
    default_model: ClassVar[str | None] = None
    needs_weights: ClassVar[bool] = True
    takes_text: ClassVar[bool] = False
    needs_text: ClassVar[bool] = False
    needs_example: ClassVar[bool] = False
    needs_mask: ClassVar[bool] = True
    needs_ground_truth: ClassVar[bool] = False
    ranks: ClassVar[bool] = False

    model: str

    @classmethod
    def generate_kwargs(cls, request: EditRequest) -> dict[str, Any]:
        """The keywords of `generate(image, mask, **kwargs)` for `request`."""
        return {"num": request.num, "seed": request.seed}

    @classmethod
    def prompt_sent(cls, request: EditRequest) -> str | None:
        """The text the model is actually given for `request` (recorded with the sample), if any."""
        return request.text if cls.takes_text else None

    def generate(self, image: Any, mask: Any, **options: Any) -> list:
        raise NotImplementedError

    def __call__(self, image: Any, mask: Any, **options: Any) -> list:
        return self.generate(image, mask, **options)


def check_pipeline_class(obj: Any) -> str | None:
    """A registry check: the loaded object must be an `EditPipeline` class."""
    if isinstance(obj, type) and issubclass(obj, EditPipeline):
        return None
    return f"expected an EditPipeline subclass, got {obj!r}"
