"""Redis under Sentinel (a master, a replica, three sentinels), named by a redis+sentinel://
URL: kill -9 the master, and quota and auth follow the promoted replica without a restart."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunningMesh, launch_mesh, meshgate_cmd, subprocess_env
from tests.support import RedisSentinelSet

PRO = "meshgate/reference-pro"
BODY = {"model": PRO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# No request may take longer than this, even while the master fails over.
HANG_S = 3.0


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningMesh, RedisSentinelSet]]:
    sentinels = RedisSentinelSet().start()
    mesh = launch_mesh(
        tmp_path_factory.mktemp("sentinel-mesh"),
        env={"REDIS_URL": sentinels.url},
        args=("--replicas", "quota=2,auth=2"),
    )
    try:
        yield mesh, sentinels
    finally:
        code = mesh.stop()
        sentinels.cleanup()
        assert code == 0, mesh.output()


def create_key(sentinels: RedisSentinelSet, *limits: str) -> str:
    created = subprocess.run(
        meshgate_cmd("keys", "create", "--name", "sentinel", *limits),
        env=subprocess_env({"REDIS_URL": sentinels.url}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def chat(http: httpx.Client, secret: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = http.post(
        "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {secret}"}
    )
    return response, time.monotonic() - started


def test_a_killed_master_is_followed_to_the_promoted_replica(
    world: tuple[RunningMesh, RedisSentinelSet],
) -> None:
    mesh, sentinels = world
    secret = create_key(sentinels, "--rpm", "100000", "--tpm", "100000000")
    seen: list[tuple[int, float]] = []
    with httpx.Client(base_url=mesh.origin, timeout=30) as http:
        response, _ = chat(http, secret)
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-limit-requests"] == "100000"
        sentinels.master.kill()
        killed = time.monotonic()
        recovered = 0
        while time.monotonic() - killed < 30:
            response, took = chat(http, secret)
            seen.append((response.status_code, took))
            if response.status_code == 503:
                assert response.headers.get("retry-after"), response.text
            else:
                assert response.status_code == 200, response.text
            recovered = recovered + 1 if response.status_code == 200 else 0
            if recovered >= 20 and sentinels.current_master_port() == sentinels.replica.port:
                break
            time.sleep(0.02)
        slow = [took for _, took in seen if took > HANG_S]
        assert not slow, f"requests hung during the failover: {slow}"
        assert recovered >= 20, f"did not recover: {[code for code, _ in seen][-20:]}"
        assert sentinels.current_master_port() == sentinels.replica.port
        # Quota counts on the new master, and auth reads new keys from it.
        fresh = create_key(sentinels, "--rpm", "3")
        codes = [chat(http, fresh)[0].status_code for _ in range(5)]
        assert codes.count(200) == 3 and codes.count(429) == 2, codes
        # And a revocation written to the new master reaches every auth replica.
        kid = "key_" + hashlib.sha256(fresh.encode()).hexdigest()[:16]
        revoked = subprocess.run(
            meshgate_cmd("keys", "revoke", kid),
            env=subprocess_env({"REDIS_URL": sentinels.url}),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 5
        while chat(http, fresh)[0].status_code != 401:
            assert time.monotonic() < deadline, "a revoked key was still admitted"
            time.sleep(0.1)
