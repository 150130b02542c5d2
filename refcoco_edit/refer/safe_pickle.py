"""Loading the RefCOCO refs pickle without running code.

The REFER `refs(<split_by>).p` files were written by Python 2. `pickle.load` would import and call
whatever the file names; a refs file only ever holds lists, dicts, strings and numbers, so the
unpickler here refuses every global look-up (`find_class`) and every persistent id. Python 2 byte
strings (keys and values) become text, decoded as UTF-8 with Latin-1 as the fallback that always
succeeds, so keys and values are text as the REFER API expects under Python 3.

The unpickler is the pure-Python one (`pickle._Unpickler`), not the C one: the C unpickler keeps its memo
in an array it grows to the largest index a PUT opcode names, so nine bytes (`\x80\x02)r` and a 4-byte
index) make it allocate and zero up to 32 GB. The Python unpickler's memo is a dict, so a file costs memory
in proportion to its size. It loads about 4x slower (1.8 s against 0.4 s for a 12 MB refs pickle of
50,000 refs on this machine).
"""

from __future__ import annotations

import gc
import io
import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from refcoco_edit.errors import DataError, UnsafePickleError


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python one: a dict memo (see the module docstring)
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


# A refs file nests five levels (list > ref > sentences > sentence > tokens); anything far deeper is
# not a refs file, and recursion that deep would exhaust the stack.
MAX_DEPTH = 64


def _textify(obj: Any, source: str) -> Any:
    """Turn Python 2 byte strings into text, recursively, keys included.

    Each container is converted once (memoised by identity): a pickle can refer to one object many
    times, and converting every reference again would turn a few hundred bytes of shared lists into
    an exponentially large tree. The result shares exactly where the input did.
    """
    memo: dict[int, Any] = {}
    keep: list[Any] = []  # the originals stay alive, so their ids cannot be reused meanwhile

    def convert(value: Any, depth: int) -> Any:
        if isinstance(value, bytes):
            return _to_text(value)
        if not isinstance(value, (dict, list, tuple, set, frozenset)):
            return value
        done = memo.get(id(value))
        if done is not None:
            return done
        if depth > MAX_DEPTH:
            raise DataError(f"{source}: not a refs file: containers nested deeper than {MAX_DEPTH} levels "
                            "(a refs file has about five)")
        keep.append(value)
        out: Any
        if isinstance(value, list):
            out = memo[id(value)] = []  # registered first: a list may contain itself
            out.extend(convert(v, depth + 1) for v in value)
        elif isinstance(value, dict):
            out = memo[id(value)] = {}
            for k, v in value.items():
                out[convert(k, depth + 1)] = convert(v, depth + 1)
        elif isinstance(value, tuple):
            out = memo[id(value)] = tuple(convert(v, depth + 1) for v in value)
        else:
            out = memo[id(value)] = type(value)(convert(v, depth + 1) for v in value)
        return out

    return convert(obj, 0)


def safe_load_bytes(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data`, refusing anything but plain containers and scalars.

    Python 2 strings are decoded as UTF-8 by the unpickler itself; only a file holding a
    string that is not UTF-8 is read again as bytes and decoded string by string, with Latin-1 as
    the fallback (each shared object once; nesting deeper than `MAX_DEPTH` is refused).
    """
    try:
        try:
            with gc_paused():
                return _RestrictedUnpickler(io.BytesIO(data), source, "utf-8").load()
        except UnicodeDecodeError:
            with gc_paused():
                return _textify(_RestrictedUnpickler(io.BytesIO(data), source, "bytes").load(), source)
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, RecursionError, OverflowError, struct.error) as exc:
        # struct.error: the Python unpickler's word for an opcode argument cut short
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
