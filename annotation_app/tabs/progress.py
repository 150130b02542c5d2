"""The Progress tab: counts by status, edit type, pipeline and annotator; per-annotator throughput."""

from __future__ import annotations

from typing import Any

import gradio as gr

from annotation_app.handlers import progress as H
from annotation_app.tabs.common import call, on_failure_show, username

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

    on_failure_show(refresh_btn.click(on_refresh, None, [summary, table], api_name="progress", queue=False),
                    summary)
    if tab is not None:
        tab.select(on_refresh, None, [summary, table], api_name=False, queue=False)
    return {"summary": summary, "throughput": table}
