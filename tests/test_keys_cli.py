"""`meshgate keys create|list|revoke` against a real Redis and a real mesh.

Tenants, dollar budgets and `keys update` are in tests/test_tenants.py."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.auth.keys import KEY_PREFIX
from tests.conftest import RunningMesh, meshgate_cmd, subprocess_env
from tests.support import RedisServer


@pytest.fixture(scope="module")
def world(start_mesh: Any) -> Iterator[tuple[RunningMesh, RedisServer]]:
    redis = RedisServer().start()
    mesh = start_mesh(redis={"url": redis.url})
    try:
        yield mesh, redis
    finally:
        assert mesh.stop() == 0
        redis.kill()


def keys(redis: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshgate_cmd("keys", *args),
        env=subprocess_env({"REDIS_URL": redis.url}),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_create_list_use_revoke(world: tuple[RunningMesh, RedisServer]) -> None:
    mesh, redis = world
    created = keys(
        redis,
        "create",
        "--name",
        "team-a",
        "--rpm",
        "100",
        "--tpm",
        "5000",
        "--models",
        "meshgate/reference-mini",
        "--redis-failure-policy",
        "fail_open",
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sk-mg-") and len(secret) > 40
    assert "shown only once" in created.stderr and secret not in created.stderr

    # Only the hash is stored.
    with redis.client() as r:
        stored = b"".join(
            k + b"".join(v for v in r.hgetall(k).values()) for k in r.scan_iter(f"{KEY_PREFIX}*")
        )
    assert secret.encode() not in stored

    listed = keys(redis, "list")
    assert listed.returncode == 0
    assert (
        "team-a" in listed.stdout
        and "active" in listed.stdout
        and "meshgate/reference-mini" in listed.stdout
    )
    assert secret not in listed.stdout and secret[6:20] not in listed.stdout
    row = next(line.split() for line in listed.stdout.splitlines() if "team-a" in line)
    key_id = row[0]
    assert row[2] == "-"  # no --tenant: the key has none

    as_json = keys(redis, "list", "--format", "json")
    assert as_json.returncode == 0 and secret[6:20] not in as_json.stdout
    (listed_key,) = [k for k in json.loads(as_json.stdout) if k["key_id"] == key_id]
    assert listed_key["tenant"] is None and listed_key["rpm"] == 100
    assert listed_key["models"] == ["meshgate/reference-mini"]
    assert listed_key["redis_failure_policy"] == "fail_open"  # the principal's enum, spelled back
    assert (listed_key["budget_usd"], listed_key["remaining_usd"]) == ("0.000000", None)

    with httpx.Client(
        base_url=mesh.origin, timeout=10, headers={"Authorization": f"Bearer {secret}"}
    ) as http:
        ok = http.post(
            "/v1/chat/completions",
            json={
                "model": "meshgate/reference-mini",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
        )
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "100"
        assert ok.headers["x-ratelimit-limit-tokens"] == "5000"

        revoked = keys(redis, "revoke", key_id)
        assert revoked.returncode == 0 and key_id in revoked.stdout
        deadline = time.monotonic() + 1
        while (status := http.get("/v1/models").status_code) == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert status == 401
        assert http.get("/v1/models").json()["error"]["code"] == "revoked_api_key"
    assert "revoked" in keys(redis, "list").stdout


def test_expiry_and_bad_arguments(world: tuple[RunningMesh, RedisServer]) -> None:
    _, redis = world
    assert keys(redis, "create", "--name", "x", "--expires", "2001-01-01").returncode == 1
    bad = keys(redis, "create", "--name", "x", "--expires", "soonish")
    assert bad.returncode == 1 and "--expires" in bad.stderr and "Traceback" not in bad.stderr
    assert keys(redis, "create", "--name", "x", "--rpm", "-1").returncode == 2
    assert keys(redis, "create", "--name", "x", "--expires", "30d").returncode == 0
    missing = keys(redis, "revoke", "key_0000000000000000")
    assert missing.returncode == 1 and "no key" in missing.stderr
    assert keys(redis, "list", "--format", "yaml").returncode == 2


def test_unreachable_redis_is_a_clear_error() -> None:
    result = subprocess.run(
        meshgate_cmd("keys", "list"),
        env=subprocess_env({"REDIS_URL": "redis://127.0.0.1:1/0"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("meshgate: cannot reach Redis")
    assert "Traceback" not in result.stderr
