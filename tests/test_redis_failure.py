"""Redis dies or hangs mid-run: each key's failure policy holds, nothing hangs, and quota
recovers by itself when Redis returns."""

from __future__ import annotations

import signal
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningMesh, free_ports
from tests.support import RedisServer, metric

PRO = "meshgate/reference-pro"
CLOSED = "sk-test-fail-closed-000000"
OPEN = "sk-test-fail-open-0000000"
BODY = {"model": PRO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def world(start_mesh: Any) -> Iterator[tuple[RunningMesh, RedisServer]]:
    redis = RedisServer().start()
    keys = [
        {
            "name": "closed",
            "secret": CLOSED,
            "rpm": 10_000,
            "tpm": 10_000_000,
            "redis_failure_policy": "fail_closed",
        },
        {
            "name": "open",
            "secret": OPEN,
            "rpm": 10_000,
            "tpm": 10_000_000,
            "redis_failure_policy": "fail_open",
        },
    ]
    (metrics_port,) = free_ports(1)
    mesh = start_mesh(
        redis={"url": redis.url}, keys=keys, services__quota__metrics_port=metrics_port
    )
    try:
        yield mesh, redis
    finally:
        assert mesh.stop() == 0
        redis.kill()


def _round(http: httpx.Client, secret: str, count: int) -> tuple[list[httpx.Response], list[float]]:
    responses, latencies = [], []
    for _ in range(count):
        started = time.monotonic()
        responses.append(
            http.post(
                "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {secret}"}
            )
        )
        latencies.append(time.monotonic() - started)
    return responses, latencies


def _p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0]


def _metric(mesh: RunningMesh, name: str) -> float:
    return metric(mesh.config.services.quota.metrics_port, name)


def _outage(mesh: RunningMesh, label: str) -> None:
    admitted_before = _metric(mesh, "meshgate_quota_fail_open_admissions_total")
    errors_before = _metric(mesh, "meshgate_quota_redis_errors_total")
    with httpx.Client(base_url=mesh.origin, timeout=10) as http:
        closed, closed_latency = _round(http, CLOSED, 20)
        opened, open_latency = _round(http, OPEN, 20)
    print(
        f"\n{label}: fail_closed p99 {_p99(closed_latency) * 1000:.0f} ms, fail_open p99 {_p99(open_latency) * 1000:.0f} ms"
    )
    for response in closed:
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("server_error", None, None)
        assert response.headers["retry-after"] == "1"
    assert [r.status_code for r in opened] == [200] * 20
    # Every fail_open admission is counted, and so is every failed Redis call.
    assert _metric(mesh, "meshgate_quota_fail_open_admissions_total") - admitted_before == 20
    assert _metric(mesh, "meshgate_quota_redis_errors_total") - errors_before >= 40
    # Quickly, not at the hop's 5 s timeout: a bound that holds on 2 busy cores.
    assert _p99(closed_latency) < 3.0
    assert _p99(open_latency) < 3.0


def _recovers(mesh: RunningMesh) -> float:
    started = time.monotonic()
    with httpx.Client(base_url=mesh.origin, timeout=10) as http:
        while time.monotonic() - started < 10:
            response = http.post(
                "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {CLOSED}"}
            )
            if response.status_code == 200:
                assert "x-ratelimit-remaining-requests" in response.headers
                return time.monotonic() - started
            time.sleep(0.1)
    raise AssertionError("quota did not recover after Redis came back")


def test_redis_killed_then_restarted(world: tuple[RunningMesh, RedisServer]) -> None:
    mesh, redis = world
    with httpx.Client(base_url=mesh.origin, timeout=10) as http:
        assert [r.status_code for r in _round(http, CLOSED, 3)[0]] == [200] * 3
    redis.kill()
    _outage(mesh, "redis killed")
    redis.start()
    print(f"recovered {_recovers(mesh) * 1000:.0f} ms after restart, meshgate untouched")


def test_redis_hanging(world: tuple[RunningMesh, RedisServer]) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP) must not hang requests."""
    mesh, redis = world
    assert redis.proc is not None
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        _outage(mesh, "redis hanging")
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    print(f"recovered {_recovers(mesh) * 1000:.0f} ms after SIGCONT")
