"""Crafted images for the tests of untrusted input."""

from __future__ import annotations

import struct
import zlib


def bomb_png(w: int, h: int, mode: str = "RGB") -> bytes:
    """A valid PNG header claiming `w` x `h` pixels (`mode` RGB or L) over a body of a few rows: a few
    hundred bytes that would decode to up to gigabytes, so a reader must refuse it from the header."""
    channels, colour_type = {"RGB": (3, 2), "L": (1, 0)}[mode]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    body = zlib.compress((b"\x00" + b"\x00" * (channels * min(w, 4096))) * 4, 9)  # far too short for h rows
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))
