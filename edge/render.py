"""Protobuf answers rendered as OpenAI's JSON shapes (openai-python 1.109.1 response models).

`system_fingerprint` is never rendered (the page: "Not exposed"). Usage always
carries OpenAI's `prompt_tokens_details.cached_tokens` and the page's
`cache_read_input_tokens` / `cache_creation_input_tokens`.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from meshgate import vectors
from meshgate.v1 import common_pb2, inference_pb2, router_pb2


def usage(u: common_pb2.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": u.cache_creation_tokens,
    }


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    return [
        {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
        for t in calls
    ]


def chat_completion(c: inference_pb2.ChatCompletion) -> bytes:
    choices = []
    for choice in c.choices:
        m = choice.message
        message: dict[str, Any] = {
            "role": "assistant",
            "content": m.content if m.HasField("content") else None,
            "refusal": m.refusal if m.HasField("refusal") else None,
            "annotations": [],
        }
        if m.tool_calls:
            message["tool_calls"] = _tool_calls(m.tool_calls)
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
        )
    return orjson.dumps(
        {
            "id": c.id,
            "object": "chat.completion",
            "created": c.created,
            "model": c.model,
            "choices": choices,
            "usage": usage(c.usage),
        }
    )


def completion(c: inference_pb2.Completion) -> bytes:
    return orjson.dumps(
        {
            "id": c.id,
            "object": "text_completion",
            "created": c.created,
            "model": c.model,
            "choices": [
                {
                    "text": ch.text,
                    "index": ch.index,
                    "logprobs": None,
                    "finish_reason": ch.finish_reason,
                }
                for ch in c.choices
            ],
            "usage": usage(c.usage),
        }
    )


def embeddings(e: inference_pb2.EmbeddingList, as_base64: bool) -> bytes:
    """Vectors arrive as little-endian float32, which is OpenAI's base64 payload as is."""
    data = [
        {
            "object": "embedding",
            "index": item.index,
            "embedding": base64.b64encode(item.vector_f32le).decode()
            if as_base64
            else vectors.unpack(item.vector_f32le),
        }
        for item in e.data
    ]
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": e.model,
            "usage": {
                "prompt_tokens": e.usage.prompt_tokens,
                "total_tokens": e.usage.prompt_tokens,
            },
        }
    )


def model_card(m: inference_pb2.ModelCard) -> dict[str, Any]:
    return {
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "category": m.category,
        "capabilities": list(m.capabilities),
        "context_length": m.context_length,
    }


def model_list(response: router_pb2.ListModelsResponse) -> bytes:
    return orjson.dumps({"object": "list", "data": [model_card(m) for m in response.models]})
