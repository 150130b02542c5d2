"""Glue between handlers and Gradio components, shared by the tabs."""

from __future__ import annotations

import html
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import gradio as gr

from annotation_app.handlers.common import Choices
from refcoco_edit.errors import RefcocoEditError

log = logging.getLogger(__name__)

PROMPT_COLOURS = {"P_r": "#3b82f6", "P_e": "#f97316"}


_current = threading.local()
_refusals: OrderedDict[str, str] = OrderedDict()
_refusals_lock = threading.Lock()
MAX_REMEMBERED = 4096


def username(request: gr.Request | None) -> str | None:
    """The signed-in user of a request; None when there is none (handlers then refuse). Also notes
    the request, so that a refusal in this thread can be shown to its session (`show_refusal`)."""
    _current.request = request
    return getattr(request, "username", None) if request is not None else None


def call(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run a handler; a refusal becomes a `gr.Error`: the API's error, a toast on the page for queued
    actions, and (through `show_refusal`, wired as `.failure`) a line in the page's message area,
    since the page shows no toast for the actions that skip the queue."""
    try:
        return fn(*args, **kwargs)
    except RefcocoEditError as exc:
        log.info("refused %s: %s", getattr(fn, "__name__", fn), exc)
        request = getattr(_current, "request", None)
        session = getattr(request, "session_hash", None)
        if session:
            with _refusals_lock:
                _refusals[session] = str(exc)
                _refusals.move_to_end(session)
                while len(_refusals) > MAX_REMEMBERED:
                    _refusals.popitem(last=False)
        raise gr.Error(html.escape(str(exc)), print_exception=False) from None


def show_refusal(request: gr.Request):
    """The session's last refusal for its message area (nothing when there is none)."""
    with _refusals_lock:
        message = _refusals.pop(getattr(request, "session_hash", None) or "", None)
    return gr.skip() if message is None else f"**Refused:** {html.escape(message)}"


def on_failure_show(dependency, message_component) -> None:
    """Show the refusal of `dependency`'s action in `message_component`."""
    dependency.failure(show_refusal, None, [message_component], queue=False, api_name=False)


def update_for(value: Any) -> Any:
    if isinstance(value, Choices):
        return gr.update(choices=value.choices, value=value.value)
    return value


def image(label: str, **kwargs: Any) -> gr.Image:
    """An output image sent to the browser as PNG (lossless)."""
    kwargs.setdefault("interactive", False)
    kwargs.setdefault("buttons", ["download", "fullscreen"])
    return gr.Image(label=label, format="png", type="pil", **kwargs)


def prompt_box(label: str = "Prompt (P_r blue, P_e orange)", **kwargs: Any) -> gr.HighlightedText:
    return gr.HighlightedText(label=label, color_map=PROMPT_COLOURS, show_legend=True, combine_adjacent=False,
                              interactive=False, **kwargs)
