"""The User study tab: rate outputs of several methods (hidden, shuffled); admins export the means.

The export comes back in the admin's own response and the page turns it into a download in the
browser (a Blob URL): no file is written for it, since a file handed to a Gradio component lands in
Gradio's cache, which the file route serves to every signed-in user who has its URL.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from annotation_app.handlers import user_study as H
from annotation_app.tabs.common import call, image, on_failure_show, prompt_box, username
from annotation_app.user_study import MAX_METHODS, QUESTION_KEYS, QUESTIONS, SCORES, SLOT_LABELS

# Save the CSV text the export returned as a file, in the browser.
DOWNLOAD_JS = """(text) => {
  if (!text) { return; }
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([text], {type: 'text/csv'}));
  a.download = 'user-study-' + new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-') + '.csv';
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}"""


def build(ctx) -> dict[str, Any]:
    state = gr.State(H.StudyState())
    asked = {q.key for q in ctx.study.questions()}
    lines = "\n".join(f"- *{q.label}*: {q.text}" for q in QUESTIONS if q.key in asked)
    gr.Markdown(f"Rate each output **1** (bad) to **5** (excellent):\n\n{lines}")
    with gr.Row():
        next_btn = gr.Button("Next item", elem_id="study-next", scale=0, min_width=140)
        progress = gr.Markdown(elem_id="study-progress")
        message = gr.Markdown(elem_id="study-message")
    with gr.Row():
        source = image("Source", elem_id="study-source", height=260)
        prompt = prompt_box("Prompt", elem_id="study-prompt")
    slots = []
    radios: dict[str, list[gr.Radio]] = {k: [] for k in QUESTION_KEYS}
    for row_start in range(0, MAX_METHODS, 4):
        with gr.Row():
            for i in range(row_start, min(row_start + 4, MAX_METHODS)):
                with gr.Column(visible=False, min_width=180) as col:
                    img = image(f"Output {SLOT_LABELS[i]}", height=220, elem_id=f"study-output-{i}")
                    for q in QUESTIONS:
                        radios[q.key].append(gr.Radio(list(SCORES), label=q.label, visible=q.key in asked,
                                                      elem_id=f"study-{q.key.replace('_', '-')}-{i}"))
                slots.append((col, img))
    rate_btn = gr.Button("Submit ratings", variant="primary", elem_id="study-submit")
    with gr.Accordion("Export (admins)", open=False):
        export_btn = gr.Button("Export means per method with 95% intervals (downloads a CSV)",
                               elem_id="study-export")
        table = gr.Dataframe(headers=H.SUMMARY_COLUMNS, interactive=False, elem_id="study-table")
        csv_text = gr.Textbox(label="CSV", lines=4, max_lines=20, interactive=False, buttons=["copy"],
                              elem_id="study-csv")

    cols = [col for col, _ in slots]
    imgs = [img for _, img in slots]
    all_radios = [r for k in QUESTION_KEYS for r in radios[k]]
    outputs = [state, source, prompt, progress, message, *cols, *imgs, *all_radios]

    def emit(result, before: H.StudyState | None) -> list:
        st, view = result
        n = view["slots"]
        # show or hide slots and questions only when they change: each visibility update makes
        # Gradio rebuild the component
        shown = len(before.methods) if isinstance(before, H.StudyState) else 0
        visibility = [gr.update(visible=i < n) if n != shown else gr.skip() for i in range(MAX_METHODS)]
        was = set(before.questions if isinstance(before, H.StudyState) and before.questions is not None else asked)
        now = set(view["questions"])
        cleared = [gr.update(value=None, visible=k in now) if (k in now) != (k in was) else None
                   for k in QUESTION_KEYS for _ in range(MAX_METHODS)]
        return [st, view["source"], view["prompt"], view["progress"], view["message"], *visibility,
                *view["outputs"], *cleared]

    def on_next(st, request: gr.Request):
        return emit(call(H.study_next, ctx, username(request), st), st)

    # Gradio passes the request only to a positional parameter before *values
    def on_rate(request: gr.Request, st, *values):
        per_question = [values[j * MAX_METHODS:(j + 1) * MAX_METHODS] for j in range(len(QUESTION_KEYS))]
        scores = list(zip(*per_question))
        return emit(call(H.study_rate, ctx, username(request), st, scores), st)

    def on_export(request: gr.Request):
        out = call(H.study_export, ctx, username(request))
        return out["rows"], out["csv"]

    on_failure_show(next_btn.click(on_next, [state], outputs, api_name="study_next", queue=False), message)
    on_failure_show(rate_btn.click(on_rate, [state, *all_radios], outputs, api_name="study_rate", queue=False),
                    message)
    export = export_btn.click(on_export, None, [table, csv_text], api_name="study_export", queue=False)
    on_failure_show(export, message)
    export.success(None, [csv_text], None, js=DOWNLOAD_JS, queue=False, api_name=False)
    return {"table": table}
