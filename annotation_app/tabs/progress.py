"""The Progress tab: counts by status, edit type, pipeline and annotator; per-annotator throughput."""

from __future__ import annotations

from typing import Any

import gradio as gr

from annotation_app.handlers import progress as H
from annotation_app.tabs.common import call, guarded, username

COLUMNS = ["user", "made", "submitted", "accepted", "rejected", "sent back", "reviewed", "active hours",
           "submitted / hour"]


def build(ctx, tab: gr.Tab | None = None) -> dict[str, Any]:
    refresh_btn = gr.Button("Refresh (Alt+P)", elem_id="progress-refresh", scale=0)
    summary = gr.Markdown("Press **Refresh**.", elem_id="progress-summary")
    gr.Markdown("#### Throughput (submissions per active hour; idle gaps over 15 minutes not counted)")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="progress-throughput")

    def on_refresh(request: gr.Request):
        report = call(H.progress_report, ctx, username(request))
        return report["summary"], report["throughput"]

    # a refusal (an account disabled meanwhile) shows in the summary and leaves the table as it was
    refresh = guarded(on_refresh, [summary, table], summary)
    refresh_btn.click(refresh, None, [summary, table], api_name="progress", queue=False)
    if tab is not None:
        tab.select(refresh, None, [summary, table], api_name=False, queue=False)
    return {"summary": summary, "throughput": table}
