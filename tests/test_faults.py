"""kill -9 each part of the mesh in turn under a bounded load: every request succeeds through
another replica or fails fast and cleanly (503 envelope with Retry-After); none hangs, none
is a 500 with a stack trace, and everything comes back without restarting the rest."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx

from bench import procstat
from bench.procstat import descendants
from tests.conftest import launch_mesh, process_alive

PRO = "meshgate/reference-pro"
REQUEST_TIMEOUT_S = 5.0
VICTIMS = ("auth", "quota", "validation", "router", "engine", "redis")


def _pids(root: int, name: str) -> list[int]:
    found = []
    for pid in descendants(root):
        argv = procstat.argv(pid)
        if not process_alive(pid):
            continue
        if name == "redis" and argv and "redis-server" in argv[0]:
            found.append(pid)
        elif "serve" in argv and name in argv:
            found.append(pid)
    return found


def _classify(status: int | None, body: str, headers: httpx.Headers | None, seconds: float) -> str:
    if status is None or seconds > REQUEST_TIMEOUT_S + 1:
        return "hung"
    if status == 200:
        return "succeeded"
    if status >= 500 and ("Traceback" in body or 'File "' in body or status == 500):
        return "500 with a stack trace"
    if status == 503 and headers is not None and headers.get("retry-after") and '"error"' in body:
        return "failed cleanly"
    return f"other {status}"


async def _phase(
    origin: str, key: str, seconds: float, on_start: asyncio.Future[None] | None = None
) -> Counter[str]:
    counts: Counter[str] = Counter()
    body = {"model": PRO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(
        base_url=origin, timeout=REQUEST_TIMEOUT_S + 2, headers={"Authorization": f"Bearer {key}"}
    ) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    response = await client.post("/v1/chat/completions", json=body)
                    outcome = _classify(
                        response.status_code,
                        response.text,
                        response.headers,
                        time.monotonic() - started,
                    )
                except httpx.TimeoutException:
                    outcome = "hung"
                except httpx.HTTPError:
                    outcome = "connection error"
                counts[outcome] += 1

        await asyncio.gather(*(worker() for _ in range(6)))
    return counts


def _wait_until_serving(origin: str, key: str) -> None:
    body = {"model": PRO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    deadline = time.monotonic() + 15
    with httpx.Client(
        base_url=origin, timeout=REQUEST_TIMEOUT_S + 2, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        while http.post("/v1/chat/completions", json=body).status_code != 200:
            assert time.monotonic() < deadline, "the mesh did not recover"
            time.sleep(0.1)


def test_kill_each_part_in_turn(tmp_path: Path) -> None:
    replicas = "auth=2,quota=2,validation=2,router=2,engine=2"
    mesh = launch_mesh(
        tmp_path, {"edge": {"request_timeout_s": REQUEST_TIMEOUT_S}}, args=("--replicas", replicas)
    )
    report: dict[str, Counter[str]] = {}
    try:
        root = mesh.proc.pid
        for victim in VICTIMS:

            async def scenario(name: str = victim) -> Counter[str]:
                load = asyncio.create_task(_phase(mesh.origin, mesh.api_key, seconds=3.0))
                await asyncio.sleep(0.8)
                pids = _pids(root, name)
                assert pids, f"no {name} process found"
                os.kill(pids[0], signal.SIGKILL)
                return await load

            report[victim] = asyncio.run(scenario())
            # The launcher restarts what died; the mesh is whole again before the next fault.
            expected = 1 if victim == "redis" else 2
            deadline = time.monotonic() + 20
            while len(_pids(root, victim)) < expected:
                assert time.monotonic() < deadline, f"{victim} did not come back"
                time.sleep(0.1)
            _wait_until_serving(
                mesh.origin, mesh.api_key
            )  # the restarted process may still be starting up
            recovered = asyncio.run(_phase(mesh.origin, mesh.api_key, seconds=1.0))
            assert set(recovered) == {"succeeded"}, (victim, recovered)
        assert mesh.proc.poll() is None, "the launcher must not have given up"
    finally:
        print()
        for victim, counts in report.items():
            print(
                f"kill -9 {victim:<10} " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            )
        assert mesh.stop() == 0
    for victim, counts in report.items():
        assert counts["hung"] == 0, victim
        assert counts["500 with a stack trace"] == 0, victim
        assert set(counts) <= {"succeeded", "failed cleanly"}, (victim, counts)
        assert counts["succeeded"] > 0, victim
        if victim != "redis":  # with a replica left, nobody should even notice
            assert counts["failed cleanly"] == 0, (victim, counts)
