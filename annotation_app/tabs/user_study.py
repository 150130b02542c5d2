"""The User study tab: rate outputs of several methods (hidden, shuffled); admins export the means.

One screen at 1366x768: a sticky bar with Next, the progress, the message line and Submit; below it
the source and the prompt on the left and the outputs side by side (four to a row), each with its
questions as compact 1-5 choices right under it. A refusal leaves the page as it was and shows its
reason on the message line (`tabs.common.guarded`), like the other screens.

The export section is shown to admins only (the handler checks the role again). The export comes
back in the admin's own response and the page turns it into a download in the browser (a Blob URL):
no file is written for it, since a file handed to a Gradio component lands in Gradio's cache, which
the file route serves to every signed-in user who has its URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from annotation_app.handlers import user_study as H
from annotation_app.tabs.common import call, guarded, image, prompt_box, username
from annotation_app.user_study import MAX_METHODS, QUESTION_KEYS, QUESTIONS, SCORES, SLOT_LABELS

PICTURE_HEIGHT = 260  # source and outputs: with three questions under them, one screen at 1366x768
PER_ROW = 4  # outputs side by side; a study with more methods shows a second row (the bar stays in view)
# What the prompt box shows without an item (an empty box would take half the column).
NO_PROMPT = [("The prompt of the item shows here.", None)]

# Save the CSV text the export returned as a file, in the browser; nothing when the export was
# refused (the CSV box then still holds an earlier export, and the message line says why).
DOWNLOAD_JS = """(text, message) => {
  if (!text || String(message || '').startsWith('**Refused')) { return; }
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([text], {type: 'text/csv'}));
  a.download = 'user-study-' + new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-') + '.csv';
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}"""


def export_view(ctx) -> Callable:
    """The page-load event for the export section: shown to admins only."""
    from annotation_app.auth import ADMIN

    def on_load(request: gr.Request):
        name = getattr(request, "username", None)
        user = ctx.reads.get_user(name) if name else None
        return gr.update(visible=user is not None and user.role in ADMIN)

    return on_load


def build(ctx) -> dict[str, Any]:
    """Lay out the tab inside the current Blocks and wire its events; returns its components (the
    export section under "export", for `export_view` to show to admins)."""
    state = gr.State(H.StudyState())
    asked = {q.key for q in ctx.study.questions()}
    with gr.Row(elem_id="study-bar", elem_classes=["sticky-bar"], equal_height=False):
        next_btn = gr.Button("Next item (Alt+N)", variant="secondary", elem_id="study-next", scale=0,
                             min_width=170, size="md")
        with gr.Column(scale=5, min_width=400, elem_classes=["bar-text"]):
            progress = gr.Markdown("Press **Next item** to get an item to rate.", elem_id="study-progress")
            message = gr.Markdown(elem_id="study-message", elem_classes=["message-line"])
        rate_btn = gr.Button("Submit ratings (Alt+S)", variant="primary", elem_id="study-submit", scale=0,
                             min_width=200, size="md")
    slots = []
    radios: dict[str, list[gr.Radio]] = {k: [] for k in QUESTION_KEYS}
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=230):
            source = image("Source", elem_id="study-source", height=PICTURE_HEIGHT)
            prompt = prompt_box("Prompt", elem_id="study-prompt", value=NO_PROMPT)
            lines = "\n".join(f"- **{q.label}**: {q.text}" for q in QUESTIONS if q.key in asked)
            gr.Markdown(f"Rate each output **1** (bad) to **5** (excellent):\n\n{lines}", elem_id="study-help",
                        elem_classes=["study-help"])
        with gr.Column(scale=PER_ROW, min_width=720):
            for row_start in range(0, MAX_METHODS, PER_ROW):
                with gr.Row(equal_height=False):
                    for i in range(row_start, min(row_start + PER_ROW, MAX_METHODS)):
                        with gr.Column(visible=False, min_width=170) as col:
                            img = image(f"Output {SLOT_LABELS[i]}", height=PICTURE_HEIGHT,
                                        elem_id=f"study-output-{i}")
                            for q in QUESTIONS:
                                radios[q.key].append(gr.Radio(
                                    list(SCORES), label=q.label, visible=q.key in asked,
                                    elem_id=f"study-{q.key.replace('_', '-')}-{i}",
                                    elem_classes=["compact-radio", "study-radio"]))
                        slots.append((col, img))
    with gr.Accordion("Export (admins)", open=False, visible=False, elem_id="study-export-section") as section:
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
        return [st, view["source"], view["prompt"] or NO_PROMPT, view["progress"], view["message"], *visibility,
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
        return out["rows"], out["csv"], f"Exported the means of {len(out['rows'])} method(s); the CSV downloads."

    def wire(trigger, fn, inputs: list, outs: list, **kwargs) -> Any:
        return trigger(guarded(fn, outs, message), inputs, outs, queue=False, **kwargs)

    wire(next_btn.click, on_next, [state], outputs, api_name="study_next")
    wire(rate_btn.click, on_rate, [state, *all_radios], outputs, api_name="study_rate")
    export = wire(export_btn.click, on_export, None, [table, csv_text, message], api_name="study_export")
    export.success(None, [csv_text, message], None, js=DOWNLOAD_JS, queue=False, api_name=False)
    return {"source": source, "prompt": prompt, "progress": progress, "message": message, "table": table,
            "export": section}
