"""Glue between handlers and Gradio components, shared by the tabs."""

from __future__ import annotations

import abc
import functools
import html
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import gradio as gr
from gradio.components.base import server

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


def from_api(request: gr.Request | None) -> bool:
    """Whether a request came from an API client (gradio_client marks its requests) rather than the page."""
    headers = getattr(request, "headers", None)
    return bool(headers is not None and headers.get("x-gradio-user") == "api")


def refusal_banner(message: str) -> str:
    """The message area's text for a refusal (`message` is already HTML-escaped)."""
    return f"**Refused:** {message}"


def guarded(fn: Callable, outputs: list, message_component) -> Callable:
    """`fn` (an event handler of a page) made safe for refusals: on the page, a refusal leaves
    every output as it was (`gr.skip()`) and shows its reason in `message_component`, which the
    layout keeps in view; raising would make Gradio mark every output "Error" and blank the
    pictures. An API client still gets the refusal as its error."""
    index = next((i for i, o in enumerate(outputs) if o is message_component), None)
    if index is None:
        raise ValueError("the message component must be one of the outputs")

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error as exc:
            request = getattr(_current, "request", None)
            if request is None or from_api(request):
                raise
            out = [gr.skip() for _ in outputs]
            out[index] = refusal_banner(str(exc.message))
            return out if len(outputs) > 1 else out[0]

    return wrapper


class _NoStubMeta(type(gr.ImageEditor)):
    """Gradio's component metaclass writes a `.pyi` stub beside every module that defines a
    component class, for its own event typing; a subclass that only adds checks needs none (and
    the app must not write into its source folder), so the class is made as ABCMeta makes it."""

    def __new__(mcs, name: str, bases: tuple, attrs: dict):
        if "__init__" in attrs or "EVENTS" in attrs:
            raise TypeError(f"{name}: a subclass made without Gradio's metaclass may not change __init__ or EVENTS")
        return abc.ABCMeta.__new__(mcs, name, bases, attrs)


class LimitedImageEditor(gr.ImageEditor, metaclass=_NoStubMeta):
    """A brush editor whose values are checked against `annotation_app.limits` before Gradio
    decodes them: the layers' number, each picture's bytes, side and pixels; and whose store of
    values sent in pieces is bounded (the oldest unused one is dropped)."""

    def get_block_name(self) -> str:
        return "imageeditor"  # the page draws it with Gradio's own editor

    @server
    def accept_blobs(self, data):  # noqa: ANN001 - gradio's AcceptBlobs
        from annotation_app.limits import MAX_PENDING_EDITS, check_editor_picture, check_layer_index

        try:
            index = int(data.data["index"]) if data.data["index"] and data.data["index"] != "null" else None
        except (TypeError, ValueError):
            raise gr.Error("editor layer: not a layer number") from None
        check_layer_index(index)
        check_editor_picture(data.files[0][1], f"editor {data.data.get('type', 'picture')}")
        key = data.data["id"]
        while key not in self.blob_storage and len(self.blob_storage) >= MAX_PENDING_EDITS:
            self.blob_storage.pop(next(iter(self.blob_storage)))
        return super().accept_blobs(data)

    def preprocess(self, payload):  # noqa: ANN001 - gradio's EditorData
        from annotation_app.errors import UploadError
        from annotation_app.limits import check_editor_files

        if payload is not None:
            try:
                if payload.id is not None and payload.id in self.blob_storage:
                    blobs = self.blob_storage[payload.id]
                    check_editor_files(blobs.background, blobs.layers, blobs.composite, "editor value")
                else:
                    check_editor_files(payload.background, payload.layers, payload.composite, "editor value")
            except UploadError as exc:
                if payload.id is not None:
                    self.blob_storage.pop(payload.id, None)
                raise gr.Error(html.escape(str(exc)), print_exception=False) from None
        return super().preprocess(payload)


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
    kwargs.setdefault("show_legend", True)
    return gr.HighlightedText(label=label, color_map=PROMPT_COLOURS, combine_adjacent=False, interactive=False,
                              **kwargs)


def signed_in_view(ctx) -> Callable:
    """The page-load event: who is signed in, and the Review tab shown only to the roles that may
    review (the handlers check the role again on every action)."""
    from annotation_app.auth import REVIEW

    def on_load(request: gr.Request):
        name = getattr(request, "username", None)
        user = ctx.reads.get_user(name) if name else None
        role = user.role if user is not None else "?"
        return f"Signed in as **{html.escape(str(name))}** ({role})", gr.update(visible=role in REVIEW)

    return on_load
