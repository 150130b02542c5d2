"""The app: the tabs composed into one Gradio Blocks, launched behind the store's sign-in.

`build_app(ctx)` only composes (each tab wires its own events to its handlers); `launch` adds what a
running server needs: Gradio's upload cache inside the store's folder, sign-in against the store's
users, Pillow's decompression-bomb limit as an error, a loopback default host, upload size limits
and the keyboard-shortcut script.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from annotation_app.context import AppContext

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
TITLE = "RefCOCO-Edit annotation"
# Result and review pictures are scaled up to fit their boxes, pixelated so masks stay crisp. The
# annotate source picture is left as Gradio draws it: its click -> pixel mapping assumes pictures
# are never scaled up, so small images are enlarged on the server instead (`render.display_factor`).
# The bars with each tab's main actions stay in view (sticky) and the layout is tight enough that a
# whole item fits a 1366x768 screen.
CSS = """
#review-source img, #review-result img, #review-source-mask img, #review-edit-mask img, #annotate-result img {
  object-fit: contain !important; image-rendering: pixelated; width: 100%; height: 100%; }
#annotate-image img { cursor: crosshair; }
.gradio-container { max-width: 1400px !important; padding-top: 0 !important; padding-bottom: 2px !important;
  --layout-gap: 8px; --block-label-margin: 0; --block-padding: 6px 10px; }
.gradio-container, .gradio-container .tabs, .gradio-container .tabitem, .gradio-container .main,
.gradio-container .wrap, .gradio-container .contain { overflow: visible !important; }
#app-header { min-height: 0; gap: 8px; }
#app-header h3 { margin: 0; }
#app-header p { margin: 0; }
.sticky-bar { position: sticky !important; top: 0; z-index: 50; background: var(--background-fill-primary);
  border-bottom: 1px solid var(--border-color-primary); padding: 4px 0; align-items: center; }
.bar-text p { margin: 0; line-height: 1.35; }
.message-line { min-height: 1.35em; }
.compact-row { gap: 6px !important; align-items: end; }
.compact-radio .wrap { gap: 2px 6px !important; }
.compact-radio label { padding: 2px 8px !important; font-size: 13px; }
.outline-legend { display: flex; flex-wrap: wrap; gap: 0 12px; font-size: 12px; line-height: 1.35; }
.legend-swatch { display: inline-block; width: 10px; height: 10px; border: 3px solid; margin-right: 4px;
  vertical-align: middle; }
#review-info { max-height: 190px; overflow-y: auto; font-size: 13px; }
#annotate-candidates .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: 56px !important; gap: 4px !important;
  padding-top: 24px !important; }
#annotate-candidates .caption-label { font-size: 11px; }
#shortcut-line { font-size: 12px; }
.study-help { font-size: 12px; line-height: 1.35; }
.study-help ul { margin: 2px 0 0 0; padding-left: 16px; }
.study-radio .block-title, .study-radio [data-testid="block-info"] { font-size: 12px; margin-bottom: 0; }
.study-radio .wrap { gap: 2px 3px !important; }
.study-radio label { padding: 2px 5px !important; }
.study-radio input[type=radio] { margin: 0 !important; }
.study-radio label span { margin-left: 4px !important; }
"""


def configure_process(store_path: Path | str, max_pixels: int) -> Path:
    """Process-wide settings, made before gradio is imported: no analytics, Gradio's upload cache
    in `<store>.gradio/` (so uploads never leave the store's folder), and any Pillow decode of more
    than `max_pixels` refused (Gradio decodes editor layers itself)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    cache = Path(f"{store_path}.gradio").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    return cache


def build_app(ctx: AppContext):
    """The Blocks with the four tabs (no server started)."""
    import gradio as gr

    from annotation_app.shortcuts import SHORTCUTS, shortcuts_markdown
    from annotation_app.tabs import annotate, progress, review, user_study
    from annotation_app.tabs.common import signed_in_view

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        with gr.Row(elem_id="app-header", equal_height=True):
            gr.Markdown(f"### {TITLE}")
            who = gr.Markdown(elem_id="signed-in-as")
            gr.Button("Sign out", link="/logout", scale=0, min_width=90, size="sm", elem_id="sign-out")
        with gr.Tabs():
            with gr.Tab("Annotate", id="annotate", elem_id="tab-annotate"):
                annotate.build(ctx)
            with gr.Tab("Review", id="review", elem_id="tab-review", visible=False) as review_tab:
                review.build(ctx)
            with gr.Tab("Progress", id="progress", elem_id="tab-progress") as progress_tab:
                progress.build(ctx, progress_tab)
            with gr.Tab("User study", id="study", elem_id="tab-study"):
                study = user_study.build(ctx)
            with gr.Tab("Shortcuts", id="shortcuts", elem_id="tab-shortcuts"):
                gr.Markdown("### Keyboard shortcuts\n\n" + shortcuts_markdown())
        gr.Markdown("Shortcuts: " + " · ".join(f"Alt+{k} {what.split(' (')[0]}" for k, what, _ in SHORTCUTS)
                    + " · 1-8 choose a candidate", elem_id="shortcut-line")
        demo.load(signed_in_view(ctx), None, [who, review_tab], queue=False, api_name=False)
        demo.load(user_study.export_view(ctx), None, [study["export"]], queue=False, api_name=False)
    demo.queue(default_concurrency_limit=16)
    return demo


def launch(ctx: AppContext, *, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT, block: bool = True,
           quiet: bool = False, session_ttl_s: float | None = None) -> Any:
    """Start the server; with `block=False` return the running Blocks (call `.close()` to stop).

    Sign-in goes through `auth.StoreAuth.sign_in` (hash off the event loop, failure limits), with
    the client's address from `auth.ClientAddressMiddleware`; once the server runs, its token table
    becomes a `sessions.SessionTokens` (expiry after `session_ttl_s`, default 12 h, and revocation).
    """
    from starlette.middleware import Middleware

    from annotation_app.auth import ClientAddressMiddleware, StoreAuth
    from annotation_app.sessions import DEFAULT_TTL_S, install
    from annotation_app.shortcuts import shortcuts_head
    from annotation_app.uploads import UploadGuard, limits_for

    if not ctx.store.list_users():
        from annotation_app.errors import AppError

        raise AppError(f"store {ctx.store.path} has no users: add one with "
                       f"`refcoco-edit app users add NAME --role admin --store {ctx.store.path}`")
    demo = build_app(ctx)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines; put it behind HTTPS", host)
    auth = StoreAuth(ctx.store)
    demo.launch(server_name=host, server_port=port, auth=auth.sign_in,
                auth_message="Sign in with your RefCOCO-Edit account.", prevent_thread_lock=True,
                max_file_size=ctx.config.max_upload_bytes, show_error=True, quiet=quiet, ssr_mode=False,
                enable_monitoring=False, mcp_server=False, run_history=False, footer_links=["api", "settings"],
                head=shortcuts_head(), css=CSS, app_kwargs={"middleware": [
                    Middleware(ClientAddressMiddleware),
                    # each user's upload quota, and only images kept (uploads.UploadGuard)
                    Middleware(UploadGuard, limits=limits_for(ctx.config))]})
    install(demo.server_app, ctx.store, ttl_s=DEFAULT_TTL_S if session_ttl_s is None else session_ttl_s)
    if block:
        try:
            demo.block_thread()
        finally:
            auth.close()
    return demo
