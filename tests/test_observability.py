"""Metrics on every process, JSON logs that carry the request id across every hop,
and no key anywhere in either."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningMesh, free_ports

PRO = "meshgate/reference-pro"
SERVICES = ("auth", "quota", "validation", "router", "engine")


@pytest.fixture(scope="module")
def observed(start_mesh: Any) -> Iterator[RunningMesh]:
    ports = free_ports(6)
    services = {name: {"metrics_port": port} for name, port in zip(SERVICES, ports, strict=False)}
    mesh = start_mesh(
        edge={"metrics_port": ports[5]},
        services=services,
        logging={"level": "DEBUG", "access_log": True},
    )
    yield mesh
    assert mesh.stop() == 0


def _metrics(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name)] not in " {":
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _log_lines(mesh: RunningMesh) -> list[dict[str, Any]]:
    lines = []
    for raw in mesh.stderr().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def test_the_request_id_reaches_every_hop_and_every_log_line_is_json(observed: RunningMesh) -> None:
    rid = "trace-obs-0001"
    with httpx.Client(
        base_url=observed.origin,
        timeout=30,
        headers={"Authorization": f"Bearer {observed.api_key}"},
    ) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": PRO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
            headers={"X-Request-Id": rid},
        )
    assert response.headers["x-request-id"] == rid
    deadline = time.monotonic() + 5
    while True:
        seen = {line["service"] for line in _log_lines(observed) if line.get("request_id") == rid}
        if {
            "edge",
            "validation",
            "quota",
            "router",
            "engine",
        } <= seen or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {"edge", "validation", "quota", "router", "engine"} <= seen, seen
    access = [
        e for e in _log_lines(observed) if e.get("request_id") == rid and e.get("msg") == "request"
    ]
    assert (
        access
        and access[0]["status"] == 200
        and access[0]["model"] == PRO
        and access[0]["route"] == "chat_completions"
    )
    for line in _log_lines(observed):
        assert {"ts", "level", "service", "msg"} <= set(line)


def test_metrics_on_every_process(observed: RunningMesh) -> None:
    with httpx.Client(
        base_url=observed.origin,
        timeout=30,
        headers={"Authorization": f"Bearer {observed.api_key}"},
    ) as http:
        for _ in range(3):
            assert (
                http.post(
                    "/v1/chat/completions",
                    json={
                        "model": PRO,
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 4,
                    },
                ).status_code
                == 200
            )
        assert (
            http.post(
                "/v1/chat/completions",
                json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
            ).status_code
            == 404
        )
    edge = _metrics(observed.config.edge.metrics_port)
    assert (
        _sample(edge, "meshgate_requests_total", route="chat_completions", model=PRO, status="200")
        >= 3
    )
    # Refused requests count too (their model label may be empty: an unknown model is no label).
    assert _sample(edge, "meshgate_requests_total", route="chat_completions", status="404") >= 1
    assert _sample(edge, "meshgate_request_seconds_count", route="chat_completions") >= 4
    assert _sample(edge, "meshgate_gateway_overhead_seconds_count", route="chat_completions") >= 3
    assert _sample(edge, "meshgate_tokens_total", model=PRO, direction="completion") >= 3
    assert _sample(edge, "meshgate_tokens_total", model=PRO, direction="prompt") > 0
    services = observed.config.services
    assert (
        _sample(
            _metrics(services.quota.metrics_port),
            "meshgate_quota_decisions_total",
            outcome="admitted",
        )
        >= 3
    )
    assert _sample(_metrics(services.router.metrics_port), "meshgate_router_replica_healthy") >= 1
    assert (
        _sample(_metrics(services.engine.metrics_port), "meshgate_engine_tokens_generated_total")
        >= 3
    )
    for name in ("auth", "validation"):
        assert "process_cpu_seconds_total" in _metrics(services.get(name).metrics_port)


def test_keys_never_reach_logs_or_metrics(observed: RunningMesh) -> None:
    wrong = "sk-this-key-does-not-exist-123456"
    with httpx.Client(base_url=observed.origin, timeout=30) as http:
        http.post(
            "/v1/chat/completions",
            json={"model": PRO, "messages": []},
            headers={"Authorization": f"Bearer {wrong}"},
        )
        http.post("/v1/chat/completions", json={"model": PRO, "messages": [{"role": "user", "content": "x"}]},
                  headers={"Authorization": f"Bearer {observed.api_key}"})  # fmt: skip
    time.sleep(0.3)
    everything = observed.stderr() + "".join(
        _metrics(port)
        for port in [
            observed.config.edge.metrics_port,
            *(observed.config.services.get(n).metrics_port for n in SERVICES),
        ]
    )
    for secret in (observed.api_key, wrong):
        assert secret not in everything
        assert secret[6:22] not in everything  # not even a fragment
