"""`POST /v1/embeddings` bodies (openai-python 1.109.1 `embedding_create_params`)."""

from __future__ import annotations

from typing import Any

from meshgate.structs import from_dict
from meshgate.v1 import inference_pb2
from services.validation import checks as c
from services.validation.completions import prompts

MODELLED = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def validate_embedding(body: dict[str, Any]) -> inference_pb2.EmbeddingRequest:
    out = inference_pb2.EmbeddingRequest(
        model=c.string(c.require(body, "model"), "model", non_empty=True)
    )
    inputs = prompts(c.require(body, "input"), "input")
    for i, text in enumerate(inputs):
        if not text:
            path = "input" if isinstance(body["input"], str) else c.join("input", i)
            raise c.Invalid(f"Invalid '{path}': empty string. Expected a non-empty string.", path)
    out.input.extend(inputs)
    if "encoding_format" in body:
        # The page is explicit: omit the field or pass "float"; an explicit null is an error.
        if body["encoding_format"] is None:
            raise c.Invalid(
                "Invalid 'encoding_format': expected 'float' or 'base64', but got null instead. "
                "Omit the field to get floats.",
                "encoding_format",
            )
        out.base64 = (
            c.one_of(body["encoding_format"], "encoding_format", ("float", "base64")) == "base64"
        )
    if body.get("dimensions") is not None:
        out.dimensions = c.integer(body["dimensions"], "dimensions", minimum=1, maximum=c.INT32_MAX)
    if body.get("user") is not None:
        out.user = c.string(body["user"], "user")
    extra = {k: v for k, v in body.items() if k not in MODELLED}
    if extra:
        out.extra.CopyFrom(from_dict(extra))
    return out
