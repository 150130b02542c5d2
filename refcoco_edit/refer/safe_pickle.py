"""Loading the RefCOCO refs pickle without running code.

The REFER `refs(<split_by>).p` files were written by Python 2. `pickle.load` would import and call
whatever the file names; a refs file only ever holds lists, dicts, strings and numbers, so the
unpickler here refuses every global look-up (`find_class`) and every persistent id. Python 2 byte
strings (keys and values) become text, decoded as UTF-8 with Latin-1 as the fallback that always
succeeds, so keys and values are text as the REFER API expects under Python 3.
"""

from __future__ import annotations

import gc
import io
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from refcoco_edit.errors import DataError, UnsafePickleError


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only the built-in containers and scalars."""

    def __init__(self, file: io.BufferedIOBase, source: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - refuses by design
        mod = module.decode("latin-1") if isinstance(module, bytes) else module
        nm = name.decode("latin-1") if isinstance(name, bytes) else name
        raise UnsafePickleError(
            f"{self._source}: refused to load: the pickle asks to import {mod}.{nm}; "
            "a refs file holds only lists, dicts, strings and numbers"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused to load: persistent id {pid!r}")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large tree of new objects is built.

    Loading RefCOCO makes millions of containers; each allocation burst triggers collections that
    scan them all again, which costs more than the loading itself. None of them can be garbage yet.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _to_text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _textify(obj: Any) -> Any:
    """Turn Python 2 byte strings into text, recursively, keys included."""
    if isinstance(obj, bytes):
        return _to_text(obj)
    if isinstance(obj, dict):
        return {_textify(k): _textify(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_textify(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_textify(v) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_textify(v) for v in obj)
    return obj


def safe_load_bytes(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data`, refusing anything but plain containers and scalars.

    Python 2 strings are decoded as UTF-8 by the C unpickler itself (fast); only a file holding a
    string that is not UTF-8 is read again as bytes and decoded string by string, with Latin-1 as
    the fallback.
    """
    try:
        try:
            with gc_paused():
                return _RestrictedUnpickler(io.BytesIO(data), source, "utf-8").load()
        except UnicodeDecodeError:
            with gc_paused():
                return _textify(_RestrictedUnpickler(io.BytesIO(data), source, "bytes").load())
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, RecursionError, OverflowError) as exc:
        raise DataError(f"{source}: not a readable pickle: {exc.__class__.__name__}: {exc}") from None


def safe_load(path: Path) -> Any:
    """Load the pickle at `path` safely (see module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"refs file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return safe_load_bytes(data, str(path))
