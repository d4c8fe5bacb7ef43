"""`meshgate up --replicas`: services run as several loopback replicas behind multi-address
targets; killing one replica of each under load fails no request; one client's requests
spread over the replicas; a stream outlives the connection age that lets new replicas in."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import procstat
from bench.procstat import descendants
from meshgate.grpcio import MAX_CONNECTION_AGE_MS
from meshgate.launcher import METRICS_HEADING, parse_replicas
from tests.conftest import RunningMesh, free_ports, launch_mesh, process_alive

PRO = "meshgate/reference-pro"
MINI = "meshgate/reference-mini"
# The engine's pause between streamed tokens in the two-quota mesh.
TOKEN_DELAY_MS = 100


def _serving(root: int, service: str) -> list[int]:
    pids = []
    for pid in descendants(root):
        argv = procstat.argv(pid)
        if "serve" in argv and service in argv and process_alive(pid):
            pids.append(pid)
    return pids


async def _load(origin: str, key: str, seconds: float, workers: int) -> list[int]:
    statuses: list[int] = []
    body = {"model": PRO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(
        base_url=origin, timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                statuses.append((await client.post("/v1/chat/completions", json=body)).status_code)

        await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses


def test_killing_one_replica_of_each_fails_no_request(tmp_path: Path) -> None:
    mesh = launch_mesh(
        tmp_path,
        {"services": {"engine": {"token_delay_ms": 5}}},
        args=("--replicas", "quota=2,auth=2,router=2"),
    )
    try:
        root = mesh.proc.pid
        for service in ("quota", "auth", "router"):
            assert len(_serving(root, service)) == 2, service
        victims = {service: _serving(root, service)[0] for service in ("quota", "auth", "router")}

        async def scenario() -> list[int]:
            load = asyncio.create_task(_load(mesh.origin, mesh.api_key, seconds=6, workers=8))
            await asyncio.sleep(1.5)
            for pid in victims.values():
                os.kill(pid, signal.SIGKILL)
            return await load

        statuses = asyncio.run(scenario())
        print(
            f"\n{len(statuses)} requests while one quota, auth and router replica died: {sorted(set(statuses))}"
        )
        assert len(statuses) > 100
        assert set(statuses) == {200}
        # The launcher restarts a dead replica; the mesh stays up.
        deadline = time.monotonic() + 20
        while any(len(_serving(root, s)) < 2 for s in victims):
            assert time.monotonic() < deadline, "replicas were not restarted"
            time.sleep(0.2)
        assert mesh.proc.poll() is None
    finally:
        assert mesh.stop() == 0


@pytest.fixture(scope="module")
def two_quotas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """A mesh with two quota replicas, each serving /metrics, and a paced engine."""
    (metrics,) = free_ports(1)
    overrides = {
        "services": {
            "quota": {"metrics_port": metrics},
            "engine": {"token_delay_ms": TOKEN_DELAY_MS},
        },
        "ledger": {"enabled": False},
    }
    mesh = launch_mesh(
        tmp_path_factory.mktemp("two-quotas"), overrides, args=("--replicas", "quota=2")
    )
    yield mesh
    assert mesh.stop() == 0, mesh.output()


def _admitted(mesh: RunningMesh) -> dict[str, int]:
    """Each quota replica's admitted Reserves, from its own /metrics (the banner lists them)."""
    deadline = time.monotonic() + 10
    urls: dict[str, str] = {}
    while set(urls) != {"quota", "quota#2"}:  # the banner's lines may still be coming
        assert time.monotonic() < deadline, mesh.output()
        time.sleep(0.05)
        lines = list(mesh.stdout_lines)
        listed = lines[lines.index(METRICS_HEADING) + 1 :] if METRICS_HEADING in lines else []
        urls = dict(line.split() for line in listed if line.startswith("  quota"))
    counts = {}
    for name, url in urls.items():
        text = httpx.get(url, timeout=5).text
        counts[name] = int(
            sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("meshgate_quota_decisions_total{") and "admitted" in line
            )
        )
    return counts


def test_one_sequential_client_reaches_both_quota_replicas(two_quotas: RunningMesh) -> None:
    """Each request makes a Reserve and (off the response path) a SettleMany. On one
    round_robin channel the two would alternate, and every Reserve of a lone client
    would reach the same replica; the edge keeps settlements on a channel of their own."""
    before = _admitted(two_quotas)
    body = {"model": MINI, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    sent = 40
    with httpx.Client(
        base_url=two_quotas.origin,
        timeout=30,
        headers={"Authorization": f"Bearer {two_quotas.api_key}"},
    ) as client:
        for _ in range(sent):
            assert client.post("/v1/chat/completions", json=body).status_code == 200
            time.sleep(0.01)  # past the settlement window: each settlement goes alone
    after = _admitted(two_quotas)
    got = {name: after[name] - before[name] for name in after}
    print(f"\n{sent} sequential requests, Reserves per quota replica: {got}")
    assert sum(got.values()) == sent
    assert min(got.values()) >= sent // 4, got


def test_a_stream_outlives_the_connection_age(two_quotas: RunningMesh) -> None:
    """Servers end each connection after MAX_CONNECTION_AGE_MS so that clients find new
    replicas; a call in flight on an aged connection still finishes on it."""
    body = {
        "model": PRO,
        "messages": [{"role": "user", "content": "Tell me a long story"}],
        "max_tokens": 90,
        "ignore_eos": True,  # exactly max_tokens tokens, paced by the engine
        "stream": True,
    }
    started = time.monotonic()
    with (
        httpx.Client(
            base_url=two_quotas.origin,
            timeout=60,
            headers={"Authorization": f"Bearer {two_quotas.api_key}"},
        ) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    elapsed = time.monotonic() - started
    print(f"\na stream of {len(events)} events over {elapsed:.1f} s")
    assert events[-1] == "data: [DONE]", events[-3:]
    assert any('"finish_reason":"length"' in e.replace(" ", "") for e in events), events[-3:]
    assert elapsed > 1.2 * MAX_CONNECTION_AGE_MS / 1000, "too short a stream to tell"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("quota=2,auth=3", {"quota": 2, "auth": 3}), ("", {}), (" router=1 ", {"router": 1})],
)
def test_parse_replicas(text: str, expected: dict[str, int]) -> None:
    assert parse_replicas(text) == expected


@pytest.mark.parametrize("text", ["edge=2", "quota", "quota=0", "quota=x", "bogus=2"])
def test_bad_replicas_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--replicas"):
        parse_replicas(text)
