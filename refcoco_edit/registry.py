"""One lazy registry shape for everything chosen by name: pipelines, metrics, benchmark methods.

Entries map a name to a "module:object" path and are imported only when asked for, so a CLI can list
names and answer `--help` without loading torch. Unknown names get a "did you mean" hint. Where the
registry allows it, a "module:object" path works in place of a name (plug-ins need no registration).
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from refcoco_edit.errors import InputError

T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def import_object(path: str) -> Any:
    """The object a "module:attr.attr" path names; ImportError/AttributeError become InputError."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise InputError(f"expected 'module:object', got {path!r}")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot import {path!r}: {exc}") from exc
    return obj


class Registry(dict[str, "str | T"], Generic[T]):
    """Names in registration order -> "module:object" (imported on first `load`) or the object itself.

    `kind` names the things in messages ("method"); `check` validates a loaded object and returns an
    error message or None; `allow_paths` lets `load` take "module:object" for unregistered names.
    """

    def __init__(self, kind: str, entries: Mapping[str, str | T] | None = None, *,
                 check: Callable[[Any], str | None] | None = None, allow_paths: bool = False) -> None:
        super().__init__(entries or {})
        self.kind = kind
        self.check = check
        self.allow_paths = allow_paths

    def names(self) -> list[str]:
        return list(self)

    def register(self, name: str, target: str | T) -> None:
        """Make `name` loadable in this process; `target` is the object or its "module:object" path."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(f"a {self.kind} name is letters, digits, '_' and '-', got {name!r}")
        if isinstance(target, str):
            if ":" not in target:
                raise InputError(f"a {self.kind} is registered as an object or 'module:object', got {target!r}")
        else:
            self._checked(target, name)
        self[name] = target

    def unknown(self, name: str) -> InputError:
        """The error for a name that is not registered, with the closest names as a hint."""
        close = difflib.get_close_matches(name, list(self), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        extra = " (or give module:Class)" if self.allow_paths else ""
        return InputError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self)}{extra}")

    def load(self, name: str) -> T:
        """The object registered as `name` (importing its module), or named by a "module:object" path."""
        if name in self:
            target = self[name]
            obj = import_object(target) if isinstance(target, str) else target
        elif self.allow_paths and ":" in name:
            obj = import_object(name)
        else:
            raise self.unknown(name)
        return self._checked(obj, name)

    def _checked(self, obj: Any, name: str) -> T:
        problem = self.check(obj) if self.check is not None else None
        if problem:
            raise InputError(f"{self.kind} {name!r}: {problem}")
        return obj
