"""The Annotate tab: the annotator's workspace (see `handlers.annotate` for what each action does).

Laid out so that a whole item fits one 1366x768 screen: a sticky bar with Next, Release, the item,
the last message, Save and Submit; below it three columns: the source picture (click an object to
pick it) with the outline legend, the prompt and generation controls, and the candidates with the
chosen result as large as the source. The optional tools (a drawn region, an example for
composition, M_e corrections, rephrasings, My samples) sit in closed sections below.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from annotation_app.context import PIPELINE_LABELS
from annotation_app.handlers import annotate as H
from annotation_app.render import legend_html
from annotation_app.tabs.common import LimitedImageEditor, call, guarded, image, prompt_box, update_for, username
from refcoco_edit.schema import EDIT_TYPES

EDIT_TYPE_HELP = {"replace": "the new object", "remove": "(none)", "attribute": "the attribute, e.g. red",
                  "add": "the object to add next to it", "other": "free edit text; {ref} marks the object"}

MAX_LISTED = 10  # rephrasings are chosen by their number in a list of at most this many
PICTURE_HEIGHT = 300  # source and result, side by side on a 1366x768 screen
# What the prompt box shows before a prompt is composed (an empty box would take a third of the screen).
NO_PROMPT = [("No prompt yet: choose an expression, an edit type and a target, then Compose.", None)]


def index_of(number: Any) -> int | None:
    """A 1-based number from the page as a 0-based index (None stays None for the handler to refuse)."""
    try:
        return int(number) - 1
    except (TypeError, ValueError):
        return None


def numbered(items: list[str], empty: str) -> str:
    return "\n".join(f"{i}. {text}" for i, text in enumerate(items, 1)) if items else f"_{empty}_"


def objects_markdown(choices) -> str:
    if not choices.choices:
        return ""
    return "Objects in this image:\n\n" + "\n".join(f"- {label}" for label, _ in choices.choices)


def sentence_update(choices) -> Any:
    """The expressions of the ref on screen, numbered from 1 (their value is the number)."""
    options = [(f"{i}. {label}", i) for i, (label, _) in enumerate(choices.choices, 1)]
    value = (choices.value + 1) if options and choices.value is not None else (1 if options else None)
    return gr.update(choices=options, value=value)


def build(ctx) -> dict[str, Any]:
    """Lay out the tab inside the current Blocks and wire its events; returns its components."""
    from gradio.utils import get_upload_folder

    state = gr.State(H.AnnotateState())
    c: dict[str, Any] = {}
    names = ctx.pipeline_names()
    first_pipeline = "region_edit" if "region_edit" in names else names[0]
    with gr.Row(elem_id="annotate-bar", elem_classes=["sticky-bar"], equal_height=False):
        next_btn = gr.Button("Next (Alt+N)", variant="primary", elem_id="annotate-next", scale=0, min_width=120,
                             size="md")
        release_btn = gr.Button("Release", elem_id="annotate-release", scale=0, min_width=80, size="sm")
        with gr.Column(scale=5, min_width=400, elem_classes=["bar-text"]):
            c["item"] = gr.Markdown("Press **Next** to get an image from the queue.", elem_id="annotate-item")
            c["message"] = gr.Markdown(elem_id="annotate-message", elem_classes=["message-line"])
        save_btn = gr.Button("Save draft (Alt+D)", elem_id="annotate-save", scale=0, min_width=175, size="md")
        submit_btn = gr.Button("Submit (Alt+S)", variant="primary", elem_id="annotate-submit", scale=0,
                               min_width=150, size="md")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=360):
            c["image"] = image("Source: click an object to pick it", elem_id="annotate-image",
                               height=PICTURE_HEIGHT)
            gr.HTML(legend_html(), elem_id="annotate-legend")
            with gr.Row(equal_height=False, elem_classes=["compact-row"]):
                outlines = gr.Checkbox(value=True, label="Outlines", elem_id="annotate-outlines", scale=0,
                                       min_width=110, container=False)
                c["object"] = gr.Number(label="Object id", precision=0, elem_id="annotate-object", scale=1,
                                        min_width=90, show_label=False, placeholder="object id",
                                        container=False)
                pick_btn = gr.Button("Pick", elem_id="annotate-pick", scale=0, min_width=60, size="sm")
        with gr.Column(scale=4, min_width=360):
            c["sentences"] = gr.Radio(label="Referring expression", choices=[], elem_id="annotate-sentences",
                                      elem_classes=["compact-radio"])
            with gr.Row(equal_height=False, elem_classes=["compact-row"]):
                c["edit_type"] = gr.Dropdown(label="Edit type", choices=list(EDIT_TYPES), value="replace",
                                             elem_id="annotate-edit-type", scale=1, min_width=110)
                c["target"] = gr.Textbox(label="Target", placeholder=EDIT_TYPE_HELP["replace"],
                                         elem_id="annotate-target", scale=2, lines=1, max_lines=1)
                with gr.Column(scale=0, min_width=90):
                    compose_btn = gr.Button("Compose", elem_id="annotate-compose", size="sm", variant="secondary")
                    wording_btn = gr.Button("Reword", elem_id="annotate-wording", size="sm")
            c["prompt"] = prompt_box(elem_id="annotate-prompt", show_legend=False, value=NO_PROMPT)
            with gr.Row(equal_height=False, elem_classes=["compact-row"]):
                c["pipeline"] = gr.Dropdown(label="Pipeline", choices=[(PIPELINE_LABELS[n], n) for n in names],
                                            value=first_pipeline, elem_id="annotate-pipeline", scale=3,
                                            min_width=160)
                num = gr.Number(value=min(4, ctx.config.max_candidates), minimum=1, maximum=ctx.config.max_candidates,
                                precision=0, label="Candidates", elem_id="annotate-num", scale=1, min_width=90)
            with gr.Row(equal_height=False, elem_classes=["compact-row"]):
                c["gen_text"] = gr.Textbox(label="Text for the model", placeholder="what the region should show",
                                           elem_id="annotate-gen-text", scale=3, lines=1, max_lines=1)
                generate_btn = gr.Button("Generate (Alt+G)", variant="primary", elem_id="annotate-generate",
                                         scale=0, min_width=170, size="md")
            with gr.Group(visible=ctx.pipeline_class(first_pipeline).needs_example) as example_group:
                gr.Markdown("**Example of the new object**: upload a picture or choose an object.")
                with gr.Row():
                    upload = gr.File(label="Upload (PNG, JPEG, WebP)", file_types=[".png", ".jpg", ".jpeg", ".webp"],
                                     type="filepath", elem_id="annotate-upload", height=90)
                    with gr.Column():
                        category = gr.Dropdown(label="Category", elem_id="annotate-example-category",
                                               choices=[(str(cat["name"]), int(cat["id"]))
                                                        for cat in ctx.data.categories])
                        example_obj = gr.Dropdown(label="Object", choices=[], elem_id="annotate-example-object")
                    c["example"] = image("Example", height=110, elem_id="annotate-example")
        with gr.Column(scale=4, min_width=360):
            c["candidates"] = gr.Gallery(label="Candidates: click one, or press 1-8", format="png", columns=4,
                                         rows=2, height=150, allow_preview=False, object_fit="contain",
                                         elem_id="annotate-candidates")
            c["result"] = image("Result: M_e outlined orange", elem_id="annotate-result", height=PICTURE_HEIGHT)
            with gr.Row(equal_height=False, elem_classes=["compact-row"]):
                c["candidate_number"] = gr.Number(label="Candidate number", value=None, precision=0, minimum=1,
                                                  elem_id="annotate-candidate-number", scale=1, min_width=90,
                                                  show_label=False, placeholder="candidate number",
                                                  container=False)
                cand_btn = gr.Button("Use candidate", elem_id="annotate-use-candidate", scale=0, min_width=110,
                                     size="sm")
    with gr.Accordion("Region to edit (default: the picked object)", open=False, elem_id="annotate-region-section"):
        with gr.Row():
            with gr.Column(scale=3):
                c["region_editor"] = LimitedImageEditor(
                    label="Region to edit (blue): paint with the brush, any shape",
                    type="pil", image_mode="RGBA", format="png", sources=(), transforms=(),
                    brush=gr.Brush(colors=["#0046ff"], color_mode="fixed"), layers=False,
                    elem_id="annotate-region", height=420)
            with gr.Column(scale=1, min_width=160):
                region_obj_btn = gr.Button("Region = object", elem_id="annotate-region-object", size="sm")
                region_box_btn = gr.Button("Region = box", elem_id="annotate-region-box", size="sm")
                region_grow_btn = gr.Button("Region = object grown", elem_id="annotate-region-grow", size="sm")
                region_mode = gr.Radio([("strokes are the region", "replace"), ("box around strokes", "box"),
                                        ("add strokes", "add"), ("cut strokes out", "remove")], value="replace",
                                       label="Brush", elem_id="annotate-region-mode")
                region_draw_btn = gr.Button("Use drawn region", variant="secondary", elem_id="annotate-region-drawn",
                                            size="sm")
                seed = gr.Textbox(label="Seed", placeholder="next unused", elem_id="annotate-seed")
                steps = gr.Number(label="Steps", value=ctx.config.default_steps, precision=0, elem_id="annotate-steps")
    with gr.Accordion("Correct M_e (the edited area)", open=False, elem_id="annotate-me-section"):
        with gr.Row():
            c["me_editor"] = LimitedImageEditor(
                label="Correct M_e (orange): paint, then add or cut out", type="pil", image_mode="RGBA",
                format="png", sources=(), transforms=(), brush=gr.Brush(colors=["#ff3c00"], color_mode="fixed"),
                layers=False, elem_id="annotate-me-editor", height=360, scale=3)
            with gr.Column(scale=1, min_width=160):
                me_mode = gr.Radio([("add strokes", "add"), ("cut strokes out", "remove"),
                                    ("strokes are M_e", "replace")], value="add", label="Brush",
                                   elem_id="annotate-me-mode")
                me_btn = gr.Button("Use corrected M_e", elem_id="annotate-me-use", size="sm")
    with gr.Accordion("Rephrasings", open=False, elem_id="annotate-rephrasing-section"):
        rephrase_btn = gr.Button("Suggest rephrasings", elem_id="annotate-rephrase", size="sm")
        with gr.Row():
            with gr.Column(scale=3):
                c["rephrasings"] = gr.Markdown(elem_id="annotate-rephrasings")
                c["rephrasing"] = gr.Radio(label="Rephrasing (number in the list)",
                                           choices=list(range(1, MAX_LISTED + 1)), elem_id="annotate-rephrasing")
            with gr.Column(scale=1, min_width=120):
                use_reph_btn = gr.Button("Use this rephrasing", elem_id="annotate-use-rephrasing", size="sm")
                drop_reph_btn = gr.Button("Discard it", elem_id="annotate-discard-rephrasing", size="sm")
    with gr.Accordion("About this item: the ref, its objects, why it is eligible", open=False):
        c["ref"] = gr.Markdown(elem_id="annotate-ref")
        c["objects"] = gr.Markdown(elem_id="annotate-objects")
    with gr.Accordion("My samples: status and the reviewers' reasons", open=False, elem_id="annotate-mine-section"):
        with gr.Row():
            mine_btn = gr.Button("Refresh", elem_id="annotate-mine-refresh", scale=0, min_width=100, size="sm")
            reopen_id = gr.Textbox(label="Sample to reopen (click a row)", elem_id="annotate-reopen-id", scale=2)
            reopen_btn = gr.Button("Reopen", elem_id="annotate-reopen", scale=0, min_width=100, size="sm")
        mine = gr.Dataframe(headers=H.MY_SAMPLES_COLUMNS, interactive=False, wrap=True, elem_id="annotate-mine")

    # What each action changes on the page. Every event lists exactly the components its handler
    # sets: Gradio 6 treats an output left out of a returned dict as an update and rebuilds that
    # component (with its API schema), which cost more than the action itself.
    full = ["item", "image", "objects", "ref", "sentences", "prompt", "edit_type", "target", "gen_text",
            "rephrasings", "region_editor", "example", "candidates", "message", "result", "me_editor",
            "candidate_number"]
    prompt_keys = ["prompt", "gen_text", "rephrasings", "message"]
    region_keys = ["image", "region_editor", "message"]
    result_keys = ["candidates", "item", "message", "result", "me_editor", "candidate_number"]
    expand = {"objects": ["objects", "object"], "rephrasings": ["rephrasings", "rephrasing"]}

    def outputs_for(keys: list[str]) -> list:
        return [state, *[c[name] for key in keys for name in expand.get(key, [key])]]

    def emit(keys: list[str], result: tuple[Any, dict]) -> list:
        """A handler's view as the values of `outputs_for(keys)`. Rephrasings go to Markdown and a
        fixed numbered radio rather than into new choices, for the same reason as above."""
        st, view = result
        missing = [k for k in keys if k not in view]
        if missing:  # a handler/tab mismatch: fail loudly in tests rather than show stale values
            raise RuntimeError(f"view lacks {missing}")
        out: list[Any] = [st]
        for key in keys:
            value = view[key]
            if key == "objects":
                out += [objects_markdown(value), value.value]
            elif key == "sentences":
                out.append(sentence_update(value))
            elif key == "prompt" and value is None:
                out.append(NO_PROMPT)
            elif key == "rephrasings":
                out += [numbered([label for label, _ in value.choices], "no rephrasings"), None]
            else:
                out.append(update_for(value))
        return out

    def on(trigger, fn, inputs: list, keys: list[str], **kwargs) -> None:
        outputs = outputs_for(keys)
        trigger(guarded(fn, outputs, c["message"]), inputs, outputs, **kwargs)

    def on_next(st, request: gr.Request):
        return emit(full, call(H.next_item, ctx, username(request), st))

    def on_release(st, request: gr.Request):
        return emit(full, call(H.release_item, ctx, username(request), st))

    def on_click(st, evt: gr.SelectData, request: gr.Request):
        x, y = evt.index[0], evt.index[1]
        return emit(full, call(H.pick_at, ctx, username(request), st, x, y))

    def on_pick(st, ann_id, request: gr.Request):
        return emit(full, call(H.pick_object, ctx, username(request), st, ann_id))

    def on_outlines(st, on_, request: gr.Request):
        return emit(["image", "message"], call(H.set_outlines, ctx, username(request), st, on_))

    def on_compose(st, number, edit_type, target, request: gr.Request):
        return emit(prompt_keys, call(H.compose_prompt, ctx, username(request), st, index_of(number), edit_type,
                                      target))

    def on_wording(st, number, edit_type, target, request: gr.Request):
        return emit(prompt_keys, call(H.compose_prompt, ctx, username(request), st, index_of(number), edit_type,
                                      target, new_wording=True))

    def on_rephrase(st, request: gr.Request):
        return emit(["rephrasings", "message"], call(H.rephrase, ctx, username(request), st, MAX_LISTED // 2))

    def on_use_reph(st, number, request: gr.Request):
        return emit(prompt_keys, call(H.accept_rephrasing, ctx, username(request), st, index_of(number)))

    def on_drop_reph(st, number, request: gr.Request):
        return emit(["rephrasings", "message"],
                    call(H.discard_rephrasing, ctx, username(request), st, index_of(number)))

    def region(kind: str):
        def handler(st, request: gr.Request):
            return emit(region_keys, call(H.set_region, ctx, username(request), st, kind))
        return handler

    def on_drawn(st, value, mode, request: gr.Request):
        return emit(region_keys, call(H.region_from_editor, ctx, username(request), st, value, mode))

    def on_upload(st, path, request: gr.Request):
        return emit(["example", "message"],
                    call(H.use_upload, ctx, username(request), st, path, upload_root=get_upload_folder()))

    def on_category(cat, request: gr.Request):
        return update_for(call(H.example_objects, ctx, username(request), cat)), gr.skip()

    def on_example(st, ann_id, request: gr.Request):
        return emit(["example", "message"], call(H.use_example_object, ctx, username(request), st, ann_id))

    def on_generate(st, pipeline, n, s, k, text, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        return emit(["candidates", "item", "message"],
                    call(H.generate, ctx, username(request), st, pipeline, n, s, k, text, progress=progress))

    def on_candidate(st, evt: gr.SelectData, request: gr.Request):
        return emit(result_keys, call(H.pick_candidate, ctx, username(request), st, evt.index))

    def on_candidate_number(st, number, request: gr.Request):
        return emit(result_keys, call(H.pick_candidate, ctx, username(request), st, index_of(number)))

    def on_me(st, value, mode, request: gr.Request):
        return emit(["message", "result", "me_editor"],
                    call(H.correct_edit_mask, ctx, username(request), st, value, mode))

    def on_save(st, request: gr.Request):
        return emit(["item", "message"], call(H.save_draft, ctx, username(request), st))

    def on_submit(st, request: gr.Request):
        return emit(["item", "message"], call(H.submit, ctx, username(request), st))

    def on_mine(request: gr.Request):
        return call(H.my_samples, ctx, username(request)), gr.skip()

    def on_mine_row(evt: gr.SelectData):
        row = evt.row_value or []
        return row[0] if row else ""

    def on_reopen(st, sample_id, request: gr.Request):
        return emit(full, call(H.reopen, ctx, username(request), st, sample_id))

    def on_pipeline(name):
        # what the pipeline needs is declared on its class
        return gr.update(visible=name in names and ctx.pipeline_class(name).needs_example)

    def on_edit_type(kind):
        return gr.update(placeholder=EDIT_TYPE_HELP.get(kind, ""))

    fast = {"queue": False}  # quick actions skip the queue: one HTTP round trip, as the page makes them
    on(next_btn.click, on_next, [state], full, api_name="next_item", **fast)
    on(release_btn.click, on_release, [state], full, api_name="release_item", **fast)
    on(c["image"].select, on_click, [state], full, api_name=False, **fast)
    on(pick_btn.click, on_pick, [state, c["object"]], full, api_name="pick_object", **fast)
    on(c["object"].submit, on_pick, [state, c["object"]], full, api_name=False, **fast)
    on(outlines.input, on_outlines, [state, outlines], ["image", "message"], api_name=False, **fast)
    prompt_inputs = [state, c["sentences"], c["edit_type"], c["target"]]
    on(compose_btn.click, on_compose, prompt_inputs, prompt_keys, api_name="compose_prompt", **fast)
    on(c["target"].submit, on_compose, prompt_inputs, prompt_keys, api_name=False, **fast)
    on(wording_btn.click, on_wording, prompt_inputs, prompt_keys, api_name=False, **fast)
    on(rephrase_btn.click, on_rephrase, [state], ["rephrasings", "message"], api_name="rephrase")
    on(use_reph_btn.click, on_use_reph, [state, c["rephrasing"]], prompt_keys, api_name="use_rephrasing", **fast)
    on(drop_reph_btn.click, on_drop_reph, [state, c["rephrasing"]], ["rephrasings", "message"],
       api_name="discard_rephrasing", **fast)
    on(region_obj_btn.click, region("object"), [state], region_keys, api_name=False, **fast)
    on(region_box_btn.click, region("box"), [state], region_keys, api_name=False, **fast)
    on(region_grow_btn.click, region("grow"), [state], region_keys, api_name=False, **fast)
    on(region_draw_btn.click, on_drawn, [state, c["region_editor"], region_mode], region_keys,
       api_name="use_drawn_region", **fast)
    on(upload.upload, on_upload, [state, upload], ["example", "message"], api_name="upload_example")
    category.input(guarded(on_category, [example_obj, c["message"]], c["message"]), [category],
                   [example_obj, c["message"]], api_name=False, **fast)
    on(example_obj.input, on_example, [state, example_obj], ["example", "message"], api_name="example_object",
       **fast)
    c["pipeline"].change(on_pipeline, [c["pipeline"]], [example_group], api_name=False, **fast)
    c["edit_type"].change(on_edit_type, [c["edit_type"]], [c["target"]], api_name=False, **fast)
    on(generate_btn.click, on_generate, [state, c["pipeline"], num, seed, steps, c["gen_text"]],
       ["candidates", "item", "message"], api_name="generate", concurrency_limit=1, concurrency_id="generate")
    on(c["candidates"].select, on_candidate, [state], result_keys, api_name=False, **fast)
    on(cand_btn.click, on_candidate_number, [state, c["candidate_number"]], result_keys, api_name="pick_candidate",
       **fast)
    on(c["candidate_number"].submit, on_candidate_number, [state, c["candidate_number"]], result_keys,
       api_name=False, **fast)
    on(me_btn.click, on_me, [state, c["me_editor"], me_mode], ["message", "result", "me_editor"],
       api_name="correct_edit_mask", **fast)
    on(save_btn.click, on_save, [state], ["item", "message"], api_name="save_draft", **fast)
    on(submit_btn.click, on_submit, [state], ["item", "message"], api_name="submit", **fast)
    mine_btn.click(guarded(on_mine, [mine, c["message"]], c["message"]), None, [mine, c["message"]],
                   api_name="my_samples", **fast)
    mine.select(on_mine_row, None, [reopen_id], api_name=False, **fast)
    on(reopen_btn.click, on_reopen, [state, reopen_id], full, api_name="reopen", **fast)
    c["mine"] = mine
    return c
