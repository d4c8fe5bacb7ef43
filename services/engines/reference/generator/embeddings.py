"""Embeddings: unit vectors hashed from the text, the same for the same input anywhere."""

from __future__ import annotations

import hashlib
import math
import sys
from array import array
from dataclasses import dataclass

from meshgate import tokens, vectors
from meshgate.v1 import inference_pb2

# Vector size when an embeddings request arrives without `dimensions`.
DEFAULT_DIMENSIONS = 1024

_U32 = "I" if array("I").itemsize == 4 else "L"
_BIG_ENDIAN = sys.byteorder == "big"  # the hash is read as little-endian u32s


@dataclass(frozen=True, slots=True)
class EmbedPlan:
    """Little-endian float32 vectors, one per input, and the prompt token count."""

    vectors: tuple[bytes, ...]
    prompt_tokens: int


def embedding_vector(text: str, dimensions: int) -> bytes:
    """A unit-length vector for text, as little-endian float32 bytes.

    SHAKE-256 of the text gives 4 bytes per component, mapped to [-1, 1);
    a hash instead of a Python RNG keeps 1024 dims well under a millisecond.
    """
    raw = array(
        _U32, hashlib.shake_256(b"meshgate-embed\x00" + text.encode()).digest(4 * dimensions)
    )
    if _BIG_ENDIAN:
        raw.byteswap()
    scale = 2.0 / 4294967296.0
    values = [u * scale - 1.0 for u in raw]
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    inv = 1.0 / norm
    return vectors.pack(v * inv for v in values)


def embed(request: inference_pb2.EmbeddingRequest) -> EmbedPlan:
    """Vectors of `dimensions` dims (1024 when unset) and the inputs' token count."""
    dims = request.dimensions if request.HasField("dimensions") and request.dimensions > 0 else 0
    dims = dims or DEFAULT_DIMENSIONS
    vectors = tuple(embedding_vector(text, dims) for text in request.input)
    return EmbedPlan(vectors, sum(tokens.count(text) for text in request.input))
