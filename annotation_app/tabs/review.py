"""The Review tab: submitted samples side by side, accept / reject / send back, and who made what."""

from __future__ import annotations

from typing import Any

import gradio as gr

from annotation_app.handlers import review as H
from annotation_app.tabs.common import call, image, on_failure_show, prompt_box, update_for, username


def build(ctx) -> dict[str, Any]:
    state = gr.State(H.ReviewState())
    c: dict[str, Any] = {}
    with gr.Row():
        next_btn = gr.Button("Next to review (Alt+N)", variant="primary", elem_id="review-next", scale=0,
                             min_width=200)
        c["message"] = gr.Markdown(elem_id="review-message")
    with gr.Row():
        c["source"] = image("Source with M (magenta)", elem_id="review-source", height=360)
        c["result"] = image("Result with M_e (orange)", elem_id="review-result", height=360)
    with gr.Row():
        c["source_mask"] = image("M: the referred object", elem_id="review-source-mask", height=200)
        c["edit_mask"] = image("M_e: the edited area", elem_id="review-edit-mask", height=200)
        with gr.Column():
            c["prompt"] = prompt_box(elem_id="review-prompt")
            c["info"] = gr.Markdown("No sample on screen.", elem_id="review-info")
    comment = gr.Textbox(label="Reason (reject) or comment (send back)", elem_id="review-comment")
    with gr.Row():
        accept_btn = gr.Button("Accept (Alt+A)", variant="primary", elem_id="review-accept")
        reject_btn = gr.Button("Reject (Alt+R)", variant="stop", elem_id="review-reject")
        back_btn = gr.Button("Send back (Alt+B)", elem_id="review-send-back")
    with gr.Accordion("Samples: who made what", open=False):
        with gr.Row():
            status = gr.Dropdown(label="Status", choices=["", "draft", "candidate", "accepted", "rejected"], value="",
                                 elem_id="review-filter-status")
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
        return call(H.sample_table, ctx, username(request), status_value or None, annotator_value or None)

    def on_row(st, evt: gr.SelectData, request: gr.Request):
        row = evt.row_value or []
        return emit(full, call(H.load_review, ctx, username(request), st, row[0] if row else ""))

    wired = [
        next_btn.click(on_next, [state], outputs_for(full), api_name="review_next", queue=False),
        accept_btn.click(on_decide("accept"), [state, comment], outputs_for(text_keys), api_name="accept",
                         queue=False),
        reject_btn.click(on_decide("reject"), [state, comment], outputs_for(text_keys), api_name="reject",
                         queue=False),
        back_btn.click(on_decide("send_back"), [state, comment], outputs_for(text_keys), api_name="send_back",
                       queue=False),
        refresh_btn.click(on_table, [status, annotator], [table], api_name="sample_table", queue=False),
        table.select(on_row, [state], outputs_for(full), api_name=False, queue=False),
    ]
    for dependency in wired:
        on_failure_show(dependency, c["message"])
    return c
