"""The router between the gateway and the engines: failover, ejection, cancellation, deadlines."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from meshgate.config import SAMPLE_CONFIG
from tests.conftest import RunningMesh, free_ports, write_config
from tests.support import Replica, metric

PRO = "meshgate/reference-pro"
SOLO = "meshgate/solo"  # served by replica 2 alone


@dataclass
class Engines:
    mesh: RunningMesh
    ports: list[int]  # gRPC ports of the three replicas; [0] belongs to `meshgate up`
    metrics: list[int]
    router_metrics: int
    config_path: Any
    extra: dict[int, Replica]

    def target(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def start(self, i: int) -> None:
        env = {
            "MESHGATE_SERVICES__ENGINE__PORT": str(self.ports[i]),
            "MESHGATE_SERVICES__ENGINE__METRICS_PORT": str(self.metrics[i]),
        }
        self.extra[i] = Replica("engine", self.config_path, env).wait_grpc(self.target(i))

    def healthy(self, i: int) -> float:
        return metric(
            self.router_metrics, "meshgate_router_replica_healthy", f'target="{self.target(i)}"'
        )


@pytest.fixture(scope="module")
def engines(start_mesh: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    e0, e1, e2, m0, m1, m2, router_metrics = free_ports(7)
    models = yaml.safe_load(SAMPLE_CONFIG.read_text())["models"]
    for model in models:
        model["engines"] = [{"kind": "grpc", "target": f"127.0.0.1:{p}"} for p in (e0, e1, e2)]
    models.append(
        {
            "id": SOLO,
            "category": "text",
            "engines": [{"kind": "grpc", "target": f"127.0.0.1:{e2}"}],
        }
    )
    overrides = {
        "models": models,
        "services": {
            "engine": {"port": e0, "metrics_port": m0, "token_delay_ms": 10},
            "router": {"metrics_port": router_metrics},
        },
    }
    config_path = write_config(tmp_path_factory.mktemp("engines"), overrides)
    state = Engines(None, [e0, e1, e2], [m0, m1, m2], router_metrics, config_path, {})  # type: ignore[arg-type]
    try:  # the extra replicas stop even when the mesh never started
        state.start(1)
        state.start(2)
        state.mesh = start_mesh(**overrides)
        try:
            yield state
        finally:
            assert state.mesh.stop() == 0
    finally:
        for replica in state.extra.values():
            replica.stop()


def _chat(stream: bool = False, max_tokens: int = 12) -> dict[str, Any]:
    return {
        "model": PRO,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def _load(
    origin: str, key: str, seconds: float, workers: int
) -> list[tuple[str, int, int, bool]]:
    """Workers send non-streaming and streaming requests for `seconds`.

    Returns (kind, status, content events before the end, ended with [DONE]) per request.
    """
    results: list[tuple[str, int, int, bool]] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(
        base_url=origin, timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as client:

        async def worker(n: int) -> None:
            while time.monotonic() < deadline:
                if n % 2:
                    response = await client.post("/v1/chat/completions", json=_chat())
                    results.append(("json", response.status_code, 0, True))
                    continue
                async with client.stream(
                    "POST", "/v1/chat/completions", json=_chat(stream=True)
                ) as response:
                    body = await response.aread()
                events = body.count(b'"delta":{"content":')
                results.append(
                    ("stream", response.status_code, events, body.endswith(b"data: [DONE]\n\n"))
                )

        await asyncio.gather(*(worker(n) for n in range(workers)))
    return results


def test_a_killed_replica_is_ejected_and_readmitted_without_failing_clients(
    engines: Engines,
) -> None:
    mesh = engines.mesh
    assert [engines.healthy(i) for i in range(3)] == [1, 1, 1]

    async def scenario() -> tuple[list[tuple[str, int, int, bool]], list[int]]:
        load = asyncio.create_task(_load(mesh.origin, mesh.api_key, seconds=6, workers=8))
        await asyncio.sleep(1.5)
        engines.extra[1].proc.send_signal(signal.SIGKILL)
        listed = []
        async with httpx.AsyncClient(
            base_url=mesh.origin, headers={"Authorization": f"Bearer {mesh.api_key}"}
        ) as client:
            for _ in range(5):
                await asyncio.sleep(0.3)
                models = (await client.get("/v1/models")).json()["data"]
                listed.append(sum(1 for m in models if m["id"] == PRO))
        return await load, listed

    results, listed = asyncio.run(scenario())
    killed_health = engines.healthy(1)
    assert killed_health == 0, "the killed replica was not ejected"
    assert listed == [1] * 5, "the model must stay listed while two replicas serve it"

    statuses = {status for _, status, _, _ in results}
    assert statuses == {200}, f"a client saw a failure: {statuses}"
    broken = [(events, done) for kind, _, events, done in results if kind == "stream" and not done]
    # A stream already running on the killed replica ends with an error event, after its first token.
    assert all(events >= 1 for events, _ in broken)
    print(
        f"\n{len(results)} requests during the kill: all 200; {len(broken)} streams ended with an error event mid-stream"
    )

    engines.start(1)  # the replica comes back on the same port
    deadline = time.monotonic() + 8
    while engines.healthy(1) != 1:
        assert time.monotonic() < deadline, "the replica was not re-admitted"
        time.sleep(0.2)
    asyncio.run(_load(mesh.origin, mesh.api_key, seconds=1.5, workers=6))
    # The restarted process counts from zero: anything above it is traffic since re-admission.
    assert metric(engines.metrics[1], "meshgate_engine_tokens_generated_total") > 0, (
        "no traffic after re-admission"
    )


def test_mid_stream_failure_is_an_error_event_and_no_replica_is_a_clean_503(
    engines: Engines,
) -> None:
    """SOLO is served by replica 2 alone: kill it during a stream, then ask for it again."""
    mesh = engines.mesh
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.origin, timeout=30, headers=headers) as http:
        body = _chat(stream=True, max_tokens=300) | {"model": SOLO, "ignore_eos": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert '"role":"assistant"' in next(line for line in lines if line.startswith("data: "))
            engines.extra[2].proc.send_signal(signal.SIGKILL)
            started = time.monotonic()
            data = [line for line in lines if line.startswith("data: ")]
            ended_after = time.monotonic() - started
        assert data[-1] != "data: [DONE]", "a truncated stream must not look finished"
        error = data[-1].removeprefix("data: ")
        assert '"type":"server_error"' in error and '"message"' in error
        assert ended_after < 5, "the stream must end promptly, not hang"

        # No replica left for SOLO: a clean 503 before any stream starts, and it is no longer listed.
        refused = http.post("/v1/chat/completions", json=_chat() | {"model": SOLO})
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "server_error"
        assert refused.headers["retry-after"] == "1"
        streaming = http.post("/v1/chat/completions", json=_chat(stream=True) | {"model": SOLO})
        assert (
            streaming.status_code == 503 and streaming.headers["content-type"] == "application/json"
        )
        assert SOLO not in [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert http.get(f"/v1/models/{SOLO}").status_code == 503

        engines.start(2)
        deadline = time.monotonic() + 8
        while SOLO not in [m["id"] for m in http.get("/v1/models").json()["data"]]:
            assert time.monotonic() < deadline, "SOLO did not come back"
            time.sleep(0.2)
        assert http.post("/v1/chat/completions", json=_chat() | {"model": SOLO}).status_code == 200


def test_client_disconnect_stops_the_engine_long_before_the_stream_ends(
    engines: Engines,
) -> None:
    """Reads a few tokens of a long SOLO stream, hangs up, and watches replica 2's counters.

    At 10 ms a token the 2,000-token stream would run 20 s on its own; the bounds (5 s,
    500 tokens) are a quarter of that, loose enough for two busy cores and three processes
    between the client and the engine; the printed figure is how fast it really was.
    """
    mesh = engines.mesh
    port = engines.metrics[2]
    cancelled_before = metric(port, "meshgate_engine_cancelled_streams_total")
    tokens_before = metric(port, "meshgate_engine_tokens_generated_total")
    with httpx.Client(
        base_url=mesh.origin, timeout=30, headers={"Authorization": f"Bearer {mesh.api_key}"}
    ) as http:
        with http.stream(
            "POST",
            "/v1/chat/completions",
            json=_chat(stream=True, max_tokens=2000) | {"model": SOLO, "ignore_eos": True},
        ) as response:
            seen = 0
            lines = response.iter_lines()
            for line in lines:
                seen += '"delta":{"content":' in line
                if seen == 3:
                    assert metric(port, "meshgate_engine_active_streams") == 1
                if seen == 5:
                    break
            lines.close()  # closing the line iterator closes the connection: the client hangs up here
            hung_up = time.monotonic()
    while metric(port, "meshgate_engine_active_streams") != 0:
        assert time.monotonic() - hung_up < 5, "the engine kept generating"
        time.sleep(0.005)
    stopped_after = time.monotonic() - hung_up
    tokens = metric(port, "meshgate_engine_tokens_generated_total")
    time.sleep(0.3)
    assert metric(port, "meshgate_engine_tokens_generated_total") == tokens, (
        "tokens still being generated"
    )
    assert metric(port, "meshgate_engine_cancelled_streams_total") == cancelled_before + 1
    print(f"\nengine stopped {stopped_after * 1000:.0f} ms after the client hung up")
    assert tokens - tokens_before < 500, "the engine generated most of the stream"


def test_deadline_is_a_clean_504_not_a_hang(start_mesh: Any) -> None:
    """One request timeout bounds every hop: an engine slower than it gets cut off."""
    mesh = start_mesh(edge={"request_timeout_s": 1}, services={"engine": {"token_delay_ms": 100}})
    try:
        with httpx.Client(
            base_url=mesh.origin, timeout=30, headers={"Authorization": f"Bearer {mesh.api_key}"}
        ) as http:
            started = time.monotonic()
            slow = http.post("/v1/chat/completions", json=_chat(max_tokens=50) | {"min_tokens": 50})
            took = time.monotonic() - started
            assert slow.status_code == 504, slow.text
            assert slow.json()["error"]["type"] == "server_error"
            assert took < 2
            started = time.monotonic()
            with http.stream(
                "POST",
                "/v1/chat/completions",
                json=_chat(stream=True, max_tokens=50) | {"min_tokens": 50},
            ) as response:
                assert response.status_code == 200
                data = [line for line in response.iter_lines() if line.startswith("data: ")]
            assert time.monotonic() - started < 2
            assert data[-1] != "data: [DONE]" and '"error"' in data[-1]
    finally:
        assert mesh.stop() == 0
