"""The Gradio workspace in which annotators build RefCOCO-Edit samples and reviewers check them.

Layout (DESIGN.md's conventions): `handlers/` holds every action as a plain function of
(context, user name, session state, inputs) that returns the new state and what to show; the
modules under `tabs/` only lay out Gradio components and wire them to the handlers; `app.py`
composes the tabs. So every action and every refusal is tested without a browser, and the app has
no logic that the store, the prompt code and the pipelines do not already have.

Start it with `refcoco-edit app --store PATH` (or `python -m annotation_app --store PATH`).
Only the standard library is imported here: gradio is imported by `app.py` and `tabs/` alone.
"""

from __future__ import annotations

__all__ = ["AppConfig", "AppContext"]


def __getattr__(name: str):
    if name in ("AppConfig", "AppContext"):
        from annotation_app import context

        return getattr(context, name)
    raise AttributeError(name)
