"""The annotator's actions: get an item, pick the source object, compose the prompt, generate and
pick a reference edit, correct M_e, save or submit.

A sample is written to the store only when there is something to keep: the first generation or
the first save creates it as a draft under the annotator's name (work key `app|ref:<id>`, so a ref
gets one sample whoever makes it); every later write passes the version the session last read, so
a concurrent change (a reviewer sending it back, the same user in another tab) is refused with
`ConflictError` instead of being overwritten.

Each action takes the app context, the signed-in user and the session's `AnnotateState`, and returns
the new state with the views it changed. Modules: `state` (the session and its checks), `views`,
`items` (the queue, drafts, My samples, the source object), `prompt`, `region` (the region and the
example), `sample` (candidates, M_e, save and submit).
"""

from annotation_app.handlers.annotate.items import (
    MY_SAMPLES_COLUMNS,
    MY_SAMPLES_LIMIT,
    my_sample_rows,
    my_samples,
    next_item,
    pick_at,
    pick_object,
    release_item,
    reopen,
)
from annotation_app.handlers.annotate.prompt import accept_rephrasing, compose_prompt, discard_rephrasing, rephrase
from annotation_app.handlers.annotate.region import (
    example_objects,
    region_from_editor,
    set_region,
    use_example_object,
    use_upload,
)
from annotation_app.handlers.annotate.sample import (
    correct_edit_mask,
    generate,
    pick_candidate,
    save,
    save_draft,
    submit,
)
from annotation_app.handlers.annotate.state import MAX_STEPS, AnnotateState
from annotation_app.handlers.annotate.views import candidate_number, default_generation_text, full_view, set_outlines

__all__ = [
    "MAX_STEPS", "MY_SAMPLES_COLUMNS", "MY_SAMPLES_LIMIT", "AnnotateState", "accept_rephrasing", "candidate_number",
    "compose_prompt", "correct_edit_mask", "default_generation_text", "discard_rephrasing", "example_objects",
    "full_view", "generate", "my_sample_rows", "my_samples", "next_item", "pick_at", "pick_object",
    "pick_candidate", "region_from_editor", "release_item", "reopen", "rephrase", "save", "save_draft",
    "set_outlines", "set_region", "submit", "use_example_object", "use_upload",
]
