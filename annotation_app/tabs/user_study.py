"""The User study tab: rate outputs of several methods (hidden, shuffled); admins export the means."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr

from annotation_app.handlers import user_study as H
from annotation_app.tabs.common import call, image, on_failure_show, prompt_box, username
from annotation_app.user_study import MAX_METHODS, SCORES, SLOT_LABELS


def build(ctx) -> dict[str, Any]:
    from gradio.utils import get_upload_folder

    state = gr.State(H.StudyState())
    gr.Markdown("Rate each output **1** (bad) to **5** (excellent). *Quality*: does the edit look right and real? "
                "*Consistency*: is everything the prompt did not ask to change left as it was?")
    with gr.Row():
        next_btn = gr.Button("Next item", elem_id="study-next", scale=0, min_width=140)
        progress = gr.Markdown(elem_id="study-progress")
        message = gr.Markdown(elem_id="study-message")
    with gr.Row():
        source = image("Source", elem_id="study-source", height=260)
        prompt = prompt_box("Prompt", elem_id="study-prompt")
    slots, quality, consistency = [], [], []
    for row_start in range(0, MAX_METHODS, 4):
        with gr.Row():
            for i in range(row_start, min(row_start + 4, MAX_METHODS)):
                with gr.Column(visible=False, min_width=180) as col:
                    img = image(f"Output {SLOT_LABELS[i]}", height=220, elem_id=f"study-output-{i}")
                    q = gr.Radio(list(SCORES), label="Quality", elem_id=f"study-quality-{i}")
                    k = gr.Radio(list(SCORES), label="Consistency", elem_id=f"study-consistency-{i}")
                slots.append((col, img))
                quality.append(q)
                consistency.append(k)
    rate_btn = gr.Button("Submit ratings", variant="primary", elem_id="study-submit")
    with gr.Accordion("Export (admins)", open=False):
        export_btn = gr.Button("Export means per method with 95% intervals", elem_id="study-export")
        table = gr.Dataframe(headers=H.SUMMARY_COLUMNS, interactive=False, elem_id="study-table")
        csv_file = gr.File(label="CSV", interactive=False, elem_id="study-csv")

    cols = [col for col, _ in slots]
    imgs = [img for _, img in slots]
    outputs = [state, source, prompt, progress, message, *cols, *imgs, *quality, *consistency]

    def emit(result, before: H.StudyState | None) -> list:
        st, view = result
        n = view["slots"]
        # show or hide slots only when their number changes: each visibility update makes Gradio
        # rebuild the component
        shown = len(before.methods) if isinstance(before, H.StudyState) else 0
        visibility = [gr.update(visible=i < n) if n != shown else gr.skip() for i in range(MAX_METHODS)]
        return [st, view["source"], view["prompt"], view["progress"], view["message"], *visibility,
                *view["outputs"], *[None] * MAX_METHODS, *[None] * MAX_METHODS]

    def on_next(st, request: gr.Request):
        return emit(call(H.study_next, ctx, username(request), st), st)

    def on_rate(st, *values, request: gr.Request):
        scores = list(zip(values[:MAX_METHODS], values[MAX_METHODS:]))
        return emit(call(H.study_rate, ctx, username(request), st, scores), st)

    def on_export(request: gr.Request):
        out = call(H.study_export, ctx, username(request))
        folder = Path(get_upload_folder()) / "study-exports"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"user-study-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        path.write_text(out["csv"], encoding="utf-8")
        return out["rows"], str(path)

    on_failure_show(next_btn.click(on_next, [state], outputs, api_name="study_next", queue=False), message)
    on_failure_show(rate_btn.click(on_rate, [state, *quality, *consistency], outputs, api_name="study_rate",
                                   queue=False), message)
    on_failure_show(export_btn.click(on_export, None, [table, csv_file], api_name="study_export"), message)
    return {"table": table}
