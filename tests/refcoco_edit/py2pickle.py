"""A writer of pickles as Python 2 wrote them (byte strings as SHORT_BINSTRING/BINSTRING).

Python 3's pickler cannot produce these: it writes `bytes` through `_codecs.encode`, which a safe
loader must refuse. RefCOCO's real refs files use exactly these opcodes, so the tests make them here.
"""

from __future__ import annotations

import struct


def dumps_py2(obj) -> bytes:
    out = bytearray(b"\x80\x02")
    _write(obj, out)
    out += b"."
    return bytes(out)


def _write(obj, out: bytearray) -> None:
    if obj is None:
        out += b"N"
    elif obj is True or obj is False:
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        if -(2**31) <= obj < 2**31:
            out += b"J" + struct.pack("<i", obj)
        else:
            raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            out += b"\x8a" + bytes([len(raw)]) + raw
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj)
    elif isinstance(obj, bytes):  # a Python 2 str
        out += (b"U" + bytes([len(obj)])) if len(obj) < 256 else (b"T" + struct.pack("<i", len(obj)))
        out += obj
    elif isinstance(obj, str):  # a Python 2 unicode
        data = obj.encode("utf-8")
        out += b"X" + struct.pack("<I", len(data)) + data
    elif isinstance(obj, list):
        out += b"]("
        for v in obj:
            _write(v, out)
        out += b"e"
    elif isinstance(obj, tuple):
        out += b"("
        for v in obj:
            _write(v, out)
        out += b"t"
    elif isinstance(obj, dict):
        out += b"}("
        for k, v in obj.items():
            _write(k, out)
            _write(v, out)
        out += b"u"
    else:
        raise TypeError(type(obj))
