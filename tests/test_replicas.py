"""`meshgate up --replicas`: services run as several loopback replicas behind multi-address
targets; killing one replica of each under load fails no request."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from bench.procstat import descendants
from meshgate.launcher import parse_replicas
from tests.conftest import launch_mesh, process_alive

PRO = "meshgate/reference-pro"


def _serving(root: int, service: str) -> list[int]:
    pids = []
    for pid in descendants(root):
        try:
            argv = psutil.Process(pid).cmdline()
        except psutil.Error:
            continue
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
