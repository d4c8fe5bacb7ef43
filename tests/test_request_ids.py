"""Every HTTP answer carries exactly one `x-request-id`, set in one middleware.

Covered here are answers that come from different layers: a handler, a
streamed body, the 431 of the header limit, a CORS refusal, Starlette's own
404/405, the health probes, and the OpenAPI document.
"""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import RunningMesh

GENERATED = re.compile(r"^req_[0-9a-f]{32}$")
CHAT = {"model": "meshgate/reference-mini", "messages": [{"role": "user", "content": "hi"}]}


def _cases(mesh: RunningMesh) -> list[tuple[str, str, dict[str, str], object]]:
    key = {"authorization": f"Bearer {mesh.api_key}"}
    return [
        ("POST", "/v1/chat/completions", key, CHAT),
        ("POST", "/v1/chat/completions", key, {**CHAT, "stream": True}),
        ("POST", "/v1/chat/completions", {}, CHAT),  # 401
        ("POST", "/v1/chat/completions", key, {"model": 1}),  # 400
        ("GET", "/v1/models", key, None),
        ("GET", "/v1/nope", key, None),  # 404 from routing
        ("DELETE", "/v1/models", key, None),  # 405
        ("GET", "/v1/models", {**key, "x-big": "a" * 70_000}, None),  # 431
        ("OPTIONS", "/v1/models", {"origin": "https://evil.example", "access-control-request-method": "GET"}, None),
        ("GET", "/healthz", {}, None),
        ("GET", "/readyz", {}, None),
        ("GET", "/openapi.json", {}, None),
    ]  # fmt: skip


@pytest.mark.parametrize("echo", [False, True], ids=["generated", "echoed"])
def test_every_answer_has_one_request_id(mesh: RunningMesh, echo: bool) -> None:
    statuses = set()
    with httpx.Client(base_url=mesh.origin, timeout=30) as http:
        for i, (method, path, headers, body) in enumerate(_cases(mesh)):
            sent = {**headers, **({"x-request-id": f"trace-{i}"} if echo else {})}
            response = http.request(method, path, headers=sent, json=body)
            ids = response.headers.get_list("x-request-id")
            where = f"{method} {path} -> {response.status_code}"
            assert len(ids) == 1, where
            if echo:
                assert ids[0] == f"trace-{i}", where
            else:
                assert GENERATED.match(ids[0]), where
            statuses.add(response.status_code)
    # The table really reaches the different layers.
    assert {200, 400, 401, 404, 405, 431} <= statuses


def test_an_unsafe_client_id_is_replaced(mesh: RunningMesh) -> None:
    response = httpx.get(f"{mesh.origin}/healthz", headers={"x-request-id": "a b\tc" * 40})
    assert GENERATED.match(response.headers["x-request-id"])
