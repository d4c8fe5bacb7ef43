"""Streams over raw HTTP, checked byte for byte against OpenAI's SSE framing.

The reference engine is deterministic, so the exact byte stream is known in
advance from its generator; only `id` and `created` are read off the response.
"""

from __future__ import annotations

import json

import httpx

from meshgate.v1 import inference_pb2
from services.engines.reference import generator
from tests.conftest import RunningMesh

PRO = "meshgate/reference-pro"


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _plan(content: str, seed: int, max_tokens: int | None = None) -> generator.ChatPlan:
    request = inference_pb2.ChatCompletionRequest(
        model=PRO, messages=[inference_pb2.ChatMessage(role="user", text=content)], seed=seed
    )
    if max_tokens is not None:
        request.max_tokens = max_tokens
    return generator.plan_chat(request)


def _post_stream(http: httpx.Client, mesh: RunningMesh, body: dict[str, object]) -> httpx.Response:
    response = http.post(
        "/v1/chat/completions",
        content=_dumps(body).encode(),
        headers={"Authorization": f"Bearer {mesh.api_key}", "Content-Type": "application/json"},
    )
    return response


def _expected(head: dict[str, object], plan: generator.ChatPlan, include_usage: bool) -> bytes:
    tail = {"usage": None} if include_usage else {}

    def event(choices: list[dict[str, object]], **extra: object) -> str:
        return "data: " + _dumps({**head, "choices": choices, **extra}) + "\n\n"

    def choice(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    out = event([choice({"role": "assistant", "content": "", "refusal": None})], **tail)
    for piece in plan.pieces:
        out += event([choice({"content": piece})], **tail)
    out += event([choice({}, plan.finish_reason)], **tail)
    if include_usage:
        p, c = plan.prompt_tokens, plan.completion_tokens
        usage = {
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }
        out += event([], usage=usage)
    return (out + "data: [DONE]\n\n").encode()


def _head(raw: bytes) -> dict[str, object]:
    first = json.loads(raw.split(b"\n\n", 1)[0].removeprefix(b"data: "))
    return {
        "id": first["id"],
        "object": "chat.completion.chunk",
        "created": first["created"],
        "model": PRO,
    }


def test_stream_bytes_with_usage(http: httpx.Client, mesh: RunningMesh) -> None:
    body = {
        "model": PRO,
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "seed": 42,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = _post_stream(http, mesh, body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-request-id"]
    raw = response.content
    plan = _plan("Tell me a story", 42)
    assert raw == _expected(_head(raw), plan, include_usage=True)
    assert raw.count(b'"role"') == 1


def test_stream_bytes_without_usage(http: httpx.Client, mesh: RunningMesh) -> None:
    body = {
        "model": PRO,
        "messages": [{"role": "user", "content": "Hi"}],
        "seed": 1,
        "max_tokens": 4,
        "stream": True,
    }
    raw = _post_stream(http, mesh, body).content
    plan = _plan("Hi", 1, max_tokens=4)
    assert plan.finish_reason == "length" and len(plan.pieces) == 4
    assert raw == _expected(_head(raw), plan, include_usage=False)
    assert b'"usage"' not in raw


def test_stream_error_before_first_chunk_is_json_with_status(
    http: httpx.Client, mesh: RunningMesh
) -> None:
    response = _post_stream(
        http,
        mesh,
        {"model": "nope", "messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "model_not_found"
