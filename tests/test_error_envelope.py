"""Every failure a client can cause is OpenAI's envelope with the exact status, type, param and code."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import RunningMesh

PRO = "meshgate/reference-pro"
MINI = "meshgate/reference-mini"
USER = [{"role": "user", "content": "hi"}]

UNPARSABLE = (
    "We could not parse the JSON body of your request. The body must be valid JSON encoded as "
    "UTF-8 (see https://platform.openai.com/docs/api-reference)."
)

# (name, path, body, status, type, param, code, message): the message is exact, OpenAI's
# wording where it has one (tests/test_validation.py holds the full table).
CASES: list[tuple[str, str, Any, int, str, str | None, str | None, str]] = [
    ("not json", "/v1/chat/completions", b"{not json", 400, "invalid_request_error", None, None, UNPARSABLE),
    ("not an object", "/v1/chat/completions", [1, 2], 400, "invalid_request_error", None, None, "The request body must be a JSON object, but got an array instead."),
    ("missing model", "/v1/chat/completions", {"messages": USER}, 400, "invalid_request_error", "model", None, "Missing required parameter: 'model'."),
    ("missing messages", "/v1/chat/completions", {"model": PRO}, 400, "invalid_request_error", "messages", None, "Missing required parameter: 'messages'."),
    ("empty messages", "/v1/chat/completions", {"model": PRO, "messages": []}, 400, "invalid_request_error", "messages", None, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead."),
    ("bad role", "/v1/chat/completions", {"model": PRO, "messages": [{"role": "tooool", "content": "x"}]}, 400, "invalid_request_error", "messages[0].role", None, "Invalid value: 'tooool'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."),
    ("content object", "/v1/chat/completions", {"model": PRO, "messages": [{"role": "user", "content": {}}]}, 400, "invalid_request_error", "messages[0].content", None, "Invalid type for 'messages[0].content': expected one of a string or array of objects, but got an object instead."),
    ("image url bad", "/v1/chat/completions", {"model": PRO, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}, 400, "invalid_request_error", "messages[1].content[0].image_url.url", None, "Invalid image URL: 'messages[1].content[0].image_url.url'. Expected a base64-encoded data URL with an image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got a value without the 'data:' prefix."),
    ("temperature high", "/v1/chat/completions", {"model": PRO, "messages": USER, "temperature": 3}, 400, "invalid_request_error", "temperature", None, "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead."),
    ("top_p type", "/v1/chat/completions", {"model": PRO, "messages": USER, "top_p": "x"}, 400, "invalid_request_error", "top_p", None, "Invalid type for 'top_p': expected a number, but got a string instead."),
    ("max_tokens type", "/v1/chat/completions", {"model": PRO, "messages": USER, "max_tokens": "5"}, 400, "invalid_request_error", "max_tokens", None, "Invalid type for 'max_tokens': expected an integer, but got a string instead."),
    ("n > 1", "/v1/chat/completions", {"model": PRO, "messages": USER, "n": 2}, 400, "invalid_request_error", "n", None, "Invalid 'n': meshgate returns a single choice; n > 1 is not supported."),
    ("logprobs", "/v1/chat/completions", {"model": PRO, "messages": USER, "logprobs": True}, 400, "invalid_request_error", "logprobs", None, "Unsupported parameter: 'logprobs' is not supported."),
    ("tool name", "/v1/chat/completions", {"model": PRO, "messages": USER, "tools": [{"type": "function", "function": {"name": "bad name"}}]}, 400, "invalid_request_error", "tools[0].function.name", None, "Invalid 'tools[0].function.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."),
    ("tools on mini", "/v1/chat/completions", {"model": MINI, "messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "invalid_request_error", "tools", None, "The model `meshgate/reference-mini` does not support tools."),
    ("image on mini", "/v1/chat/completions", {"model": MINI, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}]}]}, 400, "invalid_request_error", "messages[0].content[1]", None, "The model `meshgate/reference-mini` does not support image inputs."),
    ("context length", "/v1/chat/completions", {"model": MINI, "messages": USER, "max_tokens": 5000}, 400, "invalid_request_error", "messages", "context_length_exceeded", "This model's maximum context length is 4096 tokens. However, you requested 5008 tokens (8 in the messages, 5000 in the completion). Please reduce the length of the messages or completion."),
    ("unknown model", "/v1/chat/completions", {"model": "nope", "messages": USER}, 404, "invalid_request_error", None, "model_not_found", "The model `nope` does not exist or you do not have access to it."),
    ("chat on embeddings model", "/v1/chat/completions", {"model": "bge-m3", "messages": USER}, 400, "invalid_request_error", "model", None, "The model `bge-m3` is an embeddings model and is not supported on /v1/chat/completions."),
    ("completions missing prompt", "/v1/completions", {"model": MINI}, 400, "invalid_request_error", "prompt", None, "Missing required parameter: 'prompt'."),
    ("embeddings null format", "/v1/embeddings", {"model": "bge-m3", "input": "x", "encoding_format": None}, 400, "invalid_request_error", "encoding_format", None, "Invalid 'encoding_format': expected 'float' or 'base64', but got null instead. Omit the field to get floats."),
    ("embeddings bad format", "/v1/embeddings", {"model": "bge-m3", "input": "x", "encoding_format": "int8"}, 400, "invalid_request_error", "encoding_format", None, "Invalid value: 'int8'. Supported values are: 'float' and 'base64'."),
    ("embeddings empty input", "/v1/embeddings", {"model": "bge-m3", "input": []}, 400, "invalid_request_error", "input", None, "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead."),
    ("embeddings on chat model", "/v1/embeddings", {"model": MINI, "input": "x"}, 400, "invalid_request_error", "model", None, "The model `meshgate/reference-mini` is a text model and is not supported on /v1/embeddings."),
]  # fmt: skip


def _envelope(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get("x-request-id")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "type_", "param", "code", "message"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_bad_request(
    http: httpx.Client,
    mesh: RunningMesh,
    name: str,
    path: str,
    body: Any,
    status: int,
    type_: str,
    param: str | None,
    code: str | None,
    message: str,
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(path, content=content, headers={"Authorization": f"Bearer {mesh.api_key}"})
    assert response.status_code == status, response.text
    error = _envelope(response)
    assert (error["type"], error["param"], error["code"]) == (type_, param, code), error
    assert error["message"] == message


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_api_key"),
        ("", "missing_api_key"),
        ("Basic dXNlcjpwYXNz", "invalid_auth_scheme"),
        ("Bearer", "invalid_api_key"),
        ("Bearer sk-not-a-real-key", "invalid_api_key"),
    ],
)
def test_auth_failures_are_401(
    http: httpx.Client, mesh: RunningMesh, header: str | None, code: str
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = http.post(
        "/v1/chat/completions", json={"model": PRO, "messages": USER}, headers=headers
    )
    assert response.status_code == 401
    error = _envelope(response)
    assert (error["type"], error["param"], error["code"]) == ("authentication_error", None, code)
    # The compatibility page: "Create one from the dashboard": its keys page.
    assert error["doc_url"] == mesh.admin_origin + "/keys"
    assert "sk-not-a-real-key" not in response.text


def test_auth_failure_wins_over_bad_body(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", content=b"garbage")
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "needle"),
    [
        (
            "POST",
            "/v1/chat/completions/chat/completions",
            404,
            None,
            "Invalid URL (POST /v1/chat/completions/chat/completions)",
        ),
        ("GET", "/v2/anything", 404, None, "Invalid URL (GET /v2/anything)"),
        ("POST", "/v1/fine-tuning/jobs", 404, None, "Fine-tuning is not available on this API"),
        ("POST", "/v1/assistants", 404, None, "not planned"),
        ("POST", "/v1/threads/t1/runs", 404, None, "not planned"),
        ("POST", "/v1/batches", 404, None, "client-side fan-out"),
        ("GET", "/v1/files", 404, None, "inline request payloads"),
        ("GET", "/v1/chat/completions", 405, None, "Method not allowed"),
    ],
)
def test_routes_outside_the_surface(
    http: httpx.Client,
    mesh: RunningMesh,
    method: str,
    path: str,
    status: int,
    code: str | None,
    needle: str,
) -> None:
    response = http.request(method, path, headers={"Authorization": f"Bearer {mesh.api_key}"})
    assert response.status_code == status
    error = _envelope(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert needle in error["message"]


def test_oversized_body_is_413(http: httpx.Client, mesh: RunningMesh) -> None:
    limit = mesh.config.edge.max_body_bytes
    response = http.post(
        "/v1/chat/completions",
        content=b" " * (limit + 1),
        headers={"Authorization": f"Bearer {mesh.api_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert _envelope(response)["type"] == "invalid_request_error"


def test_success_carries_request_id_and_rate_limit_headers(
    http: httpx.Client, mesh: RunningMesh
) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": PRO, "messages": USER, "max_tokens": 3},
        headers={"Authorization": f"Bearer {mesh.api_key}", "X-Request-Id": "trace-123"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-123"
    for name in ("requests", "tokens"):
        assert int(response.headers[f"x-ratelimit-limit-{name}"]) > 0
        assert int(response.headers[f"x-ratelimit-remaining-{name}"]) >= 0
        assert response.headers[f"x-ratelimit-reset-{name}"].endswith("s")


def test_health_endpoints(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["services"] == {
        "auth": True,
        "quota": True,
        "validation": True,
        "router": True,
    }


def test_cors_is_closed_by_default(http: httpx.Client, mesh: RunningMesh) -> None:
    preflight = http.options(
        "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    assert _envelope(preflight)["type"] == "invalid_request_error"
    simple = http.post(
        "/v1/chat/completions",
        json={"model": PRO, "messages": USER, "max_tokens": 1},
        headers={"Authorization": f"Bearer {mesh.api_key}", "Origin": "https://evil.example"},
    )
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allowlist(start_mesh: Any) -> None:
    mesh = start_mesh(edge__cors_allow_origins=["https://app.example"])
    try:
        with httpx.Client(base_url=mesh.origin, timeout=30) as http:
            allowed = http.options(
                "/v1/chat/completions",
                headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
            )
            assert allowed.status_code == 204
            assert allowed.headers["access-control-allow-origin"] == "https://app.example"
            assert "authorization" in allowed.headers["access-control-allow-headers"]
            refused = http.options(
                "/v1/chat/completions",
                headers={
                    "Origin": "https://other.example",
                    "Access-Control-Request-Method": "POST",
                },
            )
            assert refused.status_code == 403
            response = http.get(
                "/v1/models",
                headers={
                    "Authorization": f"Bearer {mesh.api_key}",
                    "Origin": "https://app.example",
                },
            )
            assert response.headers["access-control-allow-origin"] == "https://app.example"
            assert "x-request-id" in response.headers["access-control-expose-headers"]
    finally:
        assert mesh.stop() == 0


def test_oversized_headers_are_431(http: httpx.Client, mesh: RunningMesh) -> None:
    limit = mesh.config.edge.max_header_bytes
    response = http.get(
        "/v1/models",
        headers={"Authorization": f"Bearer {mesh.api_key}", "X-Junk": "a" * (limit + 1)},
    )
    assert response.status_code == 431
    assert _envelope(response)["type"] == "invalid_request_error"
    fine = http.get(
        "/v1/models",
        headers={"Authorization": f"Bearer {mesh.api_key}", "X-Junk": "a" * (limit // 2)},
    )
    assert fine.status_code == 200
