"""Refusals of the app. They are `RefcocoEditError`s: the tabs show their message to the user, the
HTTP API returns it as the error, and nothing is changed in the store when one is raised."""

from __future__ import annotations

from refcoco_edit.errors import InputError, RefcocoEditError


class AppError(RefcocoEditError):
    """An action the app refuses; the message says why and what to do instead."""


class AccessDenied(AppError):
    """The signed-in user's role does not allow the action (checked on the server, from the store)."""


class NotSignedIn(AccessDenied):
    """No user name came with the request (the app always runs behind a sign-in page)."""


class StateError(AppError):
    """The action does not fit the session's state (nothing picked yet, no prompt, ...)."""


class UploadError(InputError):
    """An uploaded file was refused: wrong type, too big, a decompression bomb, or not readable."""
