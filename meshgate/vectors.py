"""Embedding vectors on the wire: little-endian float32, which is OpenAI's base64 payload as is.

`Embedding.vector_f32le` carries them in this form from engine to edge, so the
edge can base64 them without a conversion; these two functions are the only
place the byte order is handled.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable

_NATIVE_LE = sys.byteorder == "little"


def pack(values: Iterable[float]) -> bytes:
    """Floats as little-endian float32 bytes."""
    out = array("f", values)
    if not _NATIVE_LE:
        out.byteswap()
    return out.tobytes()


def unpack(raw: bytes) -> list[float]:
    """Little-endian float32 bytes as floats."""
    values = array("f")
    values.frombytes(raw)
    if not _NATIVE_LE:
        values.byteswap()
    return values.tolist()
