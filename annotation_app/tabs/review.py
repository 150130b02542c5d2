"""The Review tab: submitted samples side by side, accept / reject / send back, and who made what.

One screen at 1366x768: a sticky bar with Next, the message, the reason box and the three decisions;
below it the source with M and the result with M_e (outlines only, so colours can be judged), and
beside them the prompt, both masks and the sample's history. The table of samples is below.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from annotation_app.handlers import review as H
from annotation_app.handlers.common import STATUS_LABELS
from annotation_app.render import EDIT_MASK_COLOUR, PICKED_COLOUR
from annotation_app.tabs.common import call, guarded, image, prompt_box, update_for, username

PICTURE_HEIGHT = 360


def legend() -> str:
    return ('<div class="outline-legend">'
            f'<span class="legend-item"><span class="legend-swatch" style="border-color: rgb{PICKED_COLOUR}">'
            '</span>M: the referred object</span>'
            f'<span class="legend-item"><span class="legend-swatch" style="border-color: rgb{EDIT_MASK_COLOUR}">'
            '</span>M_e: the edited area</span></div>')


def build(ctx) -> dict[str, Any]:
    state = gr.State(H.ReviewState())
    c: dict[str, Any] = {}
    with gr.Row(elem_id="review-bar", elem_classes=["sticky-bar"], equal_height=False):
        next_btn = gr.Button("Next (Alt+N)", variant="primary", elem_id="review-next", scale=0, min_width=120,
                             size="md")
        with gr.Column(scale=2, min_width=260):
            c["message"] = gr.Markdown(elem_id="review-message", elem_classes=["message-line", "bar-text"])
        comment = gr.Textbox(show_label=False, placeholder="Reason (reject) or comment (send back)",
                             elem_id="review-comment", scale=2, lines=1, max_lines=2, container=False)
        accept_btn = gr.Button("Accept (Alt+A)", variant="primary", elem_id="review-accept", scale=0, min_width=140,
                               size="md")
        reject_btn = gr.Button("Reject (Alt+R)", variant="stop", elem_id="review-reject", scale=0, min_width=140,
                               size="md")
        back_btn = gr.Button("Send back (Alt+B)", elem_id="review-send-back", scale=0, min_width=170, size="md")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=360):
            c["source"] = image("Source with M (magenta outline)", elem_id="review-source", height=PICTURE_HEIGHT)
        with gr.Column(scale=4, min_width=360):
            c["result"] = image("Result with M_e (orange outline)", elem_id="review-result", height=PICTURE_HEIGHT)
        with gr.Column(scale=3, min_width=300):
            c["prompt"] = prompt_box(elem_id="review-prompt")
            gr.HTML(legend(), elem_id="review-legend")
            with gr.Row():
                c["source_mask"] = image("M", elem_id="review-source-mask", height=110)
                c["edit_mask"] = image("M_e", elem_id="review-edit-mask", height=110)
            c["info"] = gr.Markdown("No sample on screen.", elem_id="review-info")
    with gr.Accordion("Samples: who made what", open=False):
        with gr.Row():
            status = gr.Dropdown(label="Status", choices=[("all", ""), *[(label, value) for value, label
                                                                          in STATUS_LABELS.items()]],
                                 value="", elem_id="review-filter-status")
            annotator = gr.Textbox(label="Annotator", elem_id="review-filter-annotator")
            refresh_btn = gr.Button("Refresh", elem_id="review-refresh")
        table = gr.Dataframe(headers=H.TABLE_COLUMNS, interactive=False, wrap=True, elem_id="review-table")

    # each event lists exactly what it changes (see tabs/annotate.py for why)
    full = list(c)
    text_keys = ["info", "message"]

    def emit(keys: list[str], result) -> list:
        st, view = result
        return [st, *[update_for(view[k]) for k in keys]]

    def outputs_for(keys: list[str]) -> list:
        return [state, *[c[k] for k in keys]]

    def on_next(st, request: gr.Request):
        return emit(full, call(H.next_review, ctx, username(request), st))

    def on_decide(decision: str):
        def handler(st, text, request: gr.Request):
            return emit(text_keys, call(H.decide, ctx, username(request), st, decision, text))
        return handler

    def on_table(status_value, annotator_value, request: gr.Request):
        return call(H.sample_table, ctx, username(request), status_value or None, annotator_value or None), gr.skip()

    def on_row(st, evt: gr.SelectData, request: gr.Request):
        row = evt.row_value or []
        return emit(full, call(H.load_review, ctx, username(request), st, row[0] if row else ""))

    def wire(trigger, fn, inputs: list, outputs: list, **kwargs) -> None:
        trigger(guarded(fn, outputs, c["message"]), inputs, outputs, queue=False, **kwargs)

    wire(next_btn.click, on_next, [state], outputs_for(full), api_name="review_next")
    wire(accept_btn.click, on_decide("accept"), [state, comment], outputs_for(text_keys), api_name="accept")
    wire(reject_btn.click, on_decide("reject"), [state, comment], outputs_for(text_keys), api_name="reject")
    wire(back_btn.click, on_decide("send_back"), [state, comment], outputs_for(text_keys), api_name="send_back")
    wire(refresh_btn.click, on_table, [status, annotator], [table, c["message"]], api_name="sample_table")
    wire(table.select, on_row, [state], outputs_for(full), api_name=False)
    return c
