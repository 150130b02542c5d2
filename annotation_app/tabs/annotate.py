"""The Annotate tab: the annotator's workspace (see `handlers.annotate` for what each action does)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from annotation_app.context import PIPELINE_LABELS
from annotation_app.handlers import annotate as H
from annotation_app.tabs.common import call, image, on_failure_show, prompt_box, update_for, username
from refcoco_edit.schema import EDIT_TYPES

EDIT_TYPE_HELP = {"replace": "the new object", "remove": "(none)", "attribute": "the attribute, e.g. red",
                  "add": "the object to add next to it", "other": "free edit text; {ref} marks the object"}


MAX_LISTED = 10  # expressions and rephrasings are chosen by their number in a list of at most this many


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


def build(ctx) -> dict[str, Any]:
    """Lay out the tab inside the current Blocks and wire its events; returns its components."""
    from gradio.utils import get_upload_folder

    state = gr.State(H.AnnotateState())
    c: dict[str, Any] = {}
    with gr.Row():
        next_btn = gr.Button("Next item (Alt+N)", variant="primary", elem_id="annotate-next", scale=0, min_width=180)
        c["item"] = gr.Markdown("Press **Next** to get an image from the queue.", elem_id="annotate-item")
    with gr.Row():
        with gr.Column(scale=3):
            c["image"] = image("Image: click an object to pick it as the source", elem_id="annotate-image",
                               height=480)
        with gr.Column(scale=2):
            with gr.Row():
                c["object"] = gr.Number(label="Source object id (or click it)", precision=0,
                                        elem_id="annotate-object", scale=2)
                pick_btn = gr.Button("Pick", elem_id="annotate-pick", scale=1, min_width=80)
            c["ref"] = gr.Markdown(elem_id="annotate-ref")
            c["objects"] = gr.Markdown(elem_id="annotate-objects")
    with gr.Accordion("1 · Prompt", open=True):
        with gr.Row():
            c["sentences"] = gr.Radio(label="Referring expression (number in the list above)",
                                      choices=list(range(1, MAX_LISTED + 1)), value=1, elem_id="annotate-sentences",
                                      scale=2)
            with gr.Column(scale=1):
                c["edit_type"] = gr.Dropdown(label="Edit type", choices=list(EDIT_TYPES), value="replace",
                                             elem_id="annotate-edit-type")
                c["target"] = gr.Textbox(label="Target / edit text", placeholder=EDIT_TYPE_HELP["replace"],
                                         elem_id="annotate-target")
        with gr.Row():
            compose_btn = gr.Button("Compose prompt", elem_id="annotate-compose")
            wording_btn = gr.Button("Another wording", elem_id="annotate-wording")
            rephrase_btn = gr.Button("Suggest rephrasings", elem_id="annotate-rephrase")
        c["prompt"] = prompt_box(elem_id="annotate-prompt")
        with gr.Row():
            with gr.Column(scale=3):
                c["rephrasings"] = gr.Markdown(elem_id="annotate-rephrasings")
                c["rephrasing"] = gr.Radio(label="Rephrasing (number in the list)",
                                           choices=list(range(1, MAX_LISTED + 1)), elem_id="annotate-rephrasing")
            with gr.Column(scale=1, min_width=120):
                use_reph_btn = gr.Button("Use this rephrasing", elem_id="annotate-use-rephrasing")
                drop_reph_btn = gr.Button("Discard it", elem_id="annotate-discard-rephrasing")
    with gr.Accordion("2 · Region and pipeline", open=True):
        names = ctx.pipeline_names()
        c["pipeline"] = gr.Radio(label="Pipeline", choices=[(PIPELINE_LABELS[n], n) for n in names],
                                 value="region_edit" if "region_edit" in names else names[0],
                                 elem_id="annotate-pipeline")
        with gr.Row():
            with gr.Column(scale=3):
                c["region_editor"] = gr.ImageEditor(
                    label="Region to edit (blue): paint with the brush, any shape",
                    type="pil", image_mode="RGBA", format="png", sources=(), transforms=(),
                    brush=gr.Brush(colors=["#0046ff"], color_mode="fixed"), layers=False,
                    elem_id="annotate-region", height=420)
            with gr.Column(scale=1, min_width=160):
                region_obj_btn = gr.Button("Region = object", elem_id="annotate-region-object")
                region_box_btn = gr.Button("Region = box", elem_id="annotate-region-box")
                region_grow_btn = gr.Button("Region = object grown", elem_id="annotate-region-grow")
                region_mode = gr.Radio([("strokes are the region", "replace"), ("box around strokes", "box"),
                                        ("add strokes", "add"), ("cut strokes out", "remove")], value="replace",
                                       label="Brush", elem_id="annotate-region-mode")
                region_draw_btn = gr.Button("Use drawn region", variant="secondary", elem_id="annotate-region-drawn")
        with gr.Group(visible=False) as composition_group:
            gr.Markdown("**Example of the new object** (composition): upload a picture or pick an object.")
            with gr.Row():
                upload = gr.File(label="Upload (PNG, JPEG, WebP)", file_types=[".png", ".jpg", ".jpeg", ".webp"],
                                 type="filepath", elem_id="annotate-upload")
                with gr.Column():
                    category = gr.Dropdown(label="Category", elem_id="annotate-example-category",
                                           choices=[(str(cat["name"]), int(cat["id"])) for cat in ctx.data.categories])
                    example_obj = gr.Dropdown(label="Object", choices=[], elem_id="annotate-example-object")
                c["example"] = image("Example", height=160, elem_id="annotate-example")
        with gr.Row():
            c["gen_text"] = gr.Textbox(label="Text for the model (what the region should show)",
                                       elem_id="annotate-gen-text", scale=3)
            num = gr.Slider(1, ctx.config.max_candidates, value=min(4, ctx.config.max_candidates), step=1,
                            label="Candidates K", elem_id="annotate-num")
            seed = gr.Textbox(label="Seed", placeholder="next unused", elem_id="annotate-seed")
            steps = gr.Number(label="Steps", value=ctx.config.default_steps, precision=0, elem_id="annotate-steps")
        generate_btn = gr.Button("Generate (Alt+G)", variant="primary", elem_id="annotate-generate")
    with gr.Accordion("3 · Candidates and M_e", open=True):
        c["candidates"] = gr.Gallery(label="Candidates: click one to use it", format="png", columns=6, rows=1,
                                     height="auto", allow_preview=False, object_fit="contain",
                                     elem_id="annotate-candidates")
        with gr.Row():
            cand_number = gr.Number(label="Candidate number (or click it above)", value=1, precision=0, minimum=1,
                                    elem_id="annotate-candidate-number", scale=1)
            cand_btn = gr.Button("Use this candidate", elem_id="annotate-use-candidate", scale=1)
        with gr.Row():
            c["result"] = image("Result with M_e (orange)", elem_id="annotate-result", height=360)
            c["me_editor"] = gr.ImageEditor(
                label="Correct M_e (orange): paint, then add or cut out", type="pil", image_mode="RGBA",
                format="png",
                sources=(), transforms=(), brush=gr.Brush(colors=["#ff3c00"], color_mode="fixed"), layers=False,
                elem_id="annotate-me-editor", height=360)
        with gr.Row():
            me_mode = gr.Radio([("add strokes", "add"), ("cut strokes out", "remove"),
                                ("strokes are M_e", "replace")], value="add", label="Brush",
                               elem_id="annotate-me-mode")
            me_btn = gr.Button("Use corrected M_e", elem_id="annotate-me-use")
    with gr.Row():
        save_btn = gr.Button("Save draft (Alt+D)", elem_id="annotate-save")
        submit_btn = gr.Button("Submit for review (Alt+S)", variant="primary", elem_id="annotate-submit")
    c["message"] = gr.Markdown(elem_id="annotate-message")

    # What each action changes on the page. Every event lists exactly the components its handler
    # sets: Gradio 6 treats an output left out of a returned dict as an update and rebuilds that
    # component (with its API schema), which cost more than the action itself.
    full = ["item", "image", "objects", "ref", "sentences", "prompt", "edit_type", "target", "gen_text",
            "rephrasings", "region_editor", "example", "candidates", "message", "result", "me_editor"]
    prompt_keys = ["prompt", "gen_text", "rephrasings", "message"]
    region_keys = ["image", "region_editor", "message"]
    result_keys = ["candidates", "item", "message", "result", "me_editor"]
    expand = {"objects": ["objects", "object"], "rephrasings": ["rephrasings", "rephrasing"]}

    def outputs_for(keys: list[str]) -> list:
        return [state, *[c[name] for key in keys for name in expand.get(key, [key])]]

    def emit(keys: list[str], result: tuple[Any, dict]) -> list:
        """A handler's view as the values of `outputs_for(keys)`. Lists go to Markdown and fixed
        numbered radios rather than into new dropdown choices, for the same reason as above."""
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
                out.append((value.value + 1) if value.choices and value.value is not None else 1)
            elif key == "rephrasings":
                out += [numbered([label for label, _ in value.choices], "no rephrasings"), None]
            else:
                out.append(update_for(value))
        return out

    def on(trigger, fn, inputs: list, keys: list[str], **kwargs) -> None:
        on_failure_show(trigger(fn, inputs, outputs_for(keys), **kwargs), c["message"])

    def on_next(st, request: gr.Request):
        return emit(full, call(H.next_item, ctx, username(request), st))

    def on_click(st, evt: gr.SelectData, request: gr.Request):
        x, y = evt.index[0], evt.index[1]
        return emit(full, call(H.pick_at, ctx, username(request), st, x, y))

    def on_pick(st, ann_id, request: gr.Request):
        return emit(full, call(H.pick_object, ctx, username(request), st, ann_id))

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
        return update_for(call(H.example_objects, ctx, username(request), cat))

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

    def on_pipeline(name):
        return gr.update(visible=name == "composition")

    def on_edit_type(kind):
        return gr.update(placeholder=EDIT_TYPE_HELP.get(kind, ""))

    fast = {"queue": False}  # quick actions skip the queue: one HTTP round trip, as the page makes them
    on(next_btn.click, on_next, [state], full, api_name="next_item", **fast)
    on(c["image"].select, on_click, [state], full, api_name=False, **fast)
    on(pick_btn.click, on_pick, [state, c["object"]], full, api_name="pick_object", **fast)
    on(c["object"].submit, on_pick, [state, c["object"]], full, api_name=False, **fast)
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
    on_failure_show(category.input(on_category, [category], [example_obj], api_name=False, **fast),
                    c["message"])
    on(example_obj.input, on_example, [state, example_obj], ["example", "message"], api_name="example_object",
       **fast)
    c["pipeline"].change(on_pipeline, [c["pipeline"]], [composition_group], api_name=False, **fast)
    c["edit_type"].change(on_edit_type, [c["edit_type"]], [c["target"]], api_name=False, **fast)
    on(generate_btn.click, on_generate, [state, c["pipeline"], num, seed, steps, c["gen_text"]],
       ["candidates", "item", "message"], api_name="generate", concurrency_limit=1, concurrency_id="generate")
    on(c["candidates"].select, on_candidate, [state], result_keys, api_name=False, **fast)
    on(cand_btn.click, on_candidate_number, [state, cand_number], result_keys, api_name="pick_candidate", **fast)
    on(me_btn.click, on_me, [state, c["me_editor"], me_mode], ["message", "result", "me_editor"],
       api_name="correct_edit_mask", **fast)
    on(save_btn.click, on_save, [state], ["item", "message"], api_name="save_draft", **fast)
    on(submit_btn.click, on_submit, [state], ["item", "message"], api_name="submit", **fast)
    return c
