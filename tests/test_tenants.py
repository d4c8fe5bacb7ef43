"""Tenants as first-class: `meshgate tenants create|list|update`, keys that share a
tenant's limits, and changes that reach a running mesh within a second.

The mesh caches principals for 5 s (auth and edge alike), so a change seen
within 1 s can only have come by the `mg:key-events` announcement.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from meshgate.shards import key_prefix, period_id, shard_of, spent_usd_key, tenant_prefix
from meshgate.v1 import auth_pb2, auth_pb2_grpc, common_pb2
from tests.conftest import RunningMesh, meshgate_cmd, subprocess_env
from tests.support import RedisServer

CONFIG_TENANT = {"id": "cfg-team", "rpm": 7, "budget_usd": "0.5", "budget_period": "day"}
PROPAGATION_S = 1.0


@pytest.fixture(scope="module")
def world(start_mesh: Any) -> Iterator[tuple[RunningMesh, RedisServer]]:
    redis = RedisServer().start()
    mesh = start_mesh(
        redis={"url": redis.url}, auth={"cache_ttl_ms": 5000}, tenants=[CONFIG_TENANT]
    )
    try:
        yield mesh, redis
    finally:
        assert mesh.stop() == 0
        redis.kill()


def meshgate(
    world: tuple[RunningMesh, RedisServer], *args: str
) -> subprocess.CompletedProcess[str]:
    """`meshgate GROUP --config <the mesh's file> ACTION ...`, with the mesh's Redis."""
    mesh, redis = world
    group, *rest = args
    return subprocess.run(
        meshgate_cmd(group, "--config", str(mesh.config_path), *rest),
        env=subprocess_env({"REDIS_URL": redis.url}),
        capture_output=True,
        text=True,
        timeout=30,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stderr.startswith("meshgate: ") and text in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def create_key(world: tuple[RunningMesh, RedisServer], *args: str) -> tuple[str, str]:
    """A key made by the CLI: (secret, key_id)."""
    created = meshgate(world, "keys", "create", *args)
    secret = ok(created).strip()
    return secret, created.stderr.split()[1]


def listing(world: tuple[RunningMesh, RedisServer], group: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(ok(meshgate(world, group, "list", "--format", "json")))
    return items


def authenticate(mesh: RunningMesh, secret: str) -> common_pb2.Principal:
    with grpc.insecure_channel(mesh.config.services.auth.dial_target()) as channel:
        answer = auth_pb2_grpc.AuthServiceStub(channel).Authenticate(
            auth_pb2.AuthenticateRequest(authorization=f"Bearer {secret}"), timeout=5
        )
    principal: common_pb2.Principal = answer.principal
    return principal


def within(seconds: float, probe: Any) -> float:
    """Seconds until `probe()` is true; fails after `seconds`."""
    start = time.monotonic()
    while not probe():
        assert time.monotonic() - start < seconds, f"not seen within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_tenants_are_created_listed_and_updated(world: tuple[RunningMesh, RedisServer]) -> None:
    assert ok(
        meshgate(
            world,
            "tenants",
            "create",
            "--id",
            "team-a",
            "--rpm",
            "100",
            "--tpm",
            "5000",
            "--max-concurrency",
            "4",
            "--budget-usd",
            "12.5",
            "--budget-period",
            "month",
        )
    ) == ("created tenant team-a\n")
    refused(meshgate(world, "tenants", "create", "--id", "team-a"), 1, "already exists")
    refused(meshgate(world, "tenants", "create", "--id", "cfg-team"), 1, "config file")
    refused(meshgate(world, "tenants", "create", "--id", "no spaces"), 1, "tenant id")

    table = ok(meshgate(world, "tenants", "list"))
    row = next(line.split() for line in table.splitlines() if line.startswith("team-a"))
    assert row[:5] == ["team-a", "redis", "100", "5000", "4"]
    assert "$12.50" in row and "month" in row
    assert any(line.split()[:3] == ["cfg-team", "config", "7"] for line in table.splitlines())

    assert ok(meshgate(world, "tenants", "update", "team-a", "--tpm", "6000")).startswith(
        "updated tenant team-a: tpm=6000"
    )
    tenants = {t["id"]: t for t in listing(world, "tenants")}
    assert tenants["team-a"] | {"created_at": None} == {
        "id": "team-a",
        "source": "redis",
        "rpm": 100,  # untouched by the update
        "tpm": 6000,
        "max_concurrency": 4,
        "budget_tokens": 0,
        "budget_usd": "12.500000",
        "budget_period": "month",
        "spent_usd": "0.000000",
        "remaining_usd": "12.500000",
        "created_at": None,
    }
    assert tenants["cfg-team"]["budget_usd"] == "0.500000"
    assert tenants["cfg-team"]["budget_period"] == "day"

    refused(meshgate(world, "tenants", "update", "nobody", "--rpm", "1"), 1, "no tenant 'nobody'")
    refused(meshgate(world, "tenants", "update", "cfg-team", "--rpm", "1"), 1, "config file")
    refused(meshgate(world, "tenants", "update", "team-a"), 1, "nothing to update")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-1", "negative"),
        ("0.0000001", "more than 6 decimal places"),
        ("abc", "not a dollar amount"),
        ("NaN", "not a dollar amount"),
    ],
)
def test_bad_dollar_budgets_are_refused(
    world: tuple[RunningMesh, RedisServer], value: str, reason: str
) -> None:
    for command in (
        ("keys", "create", "--name", "x", "--budget-usd", value),
        ("keys", "update", "key_0000000000000000", "--budget-usd", value),
        ("tenants", "create", "--id", "t-bad", "--budget-usd", value),
        ("tenants", "update", "t-bad", "--budget-usd", value),
    ):
        refused(meshgate(world, *command), 2, reason)


def test_a_key_may_only_name_an_existing_tenant(world: tuple[RunningMesh, RedisServer]) -> None:
    refused(
        meshgate(world, "keys", "create", "--name", "lost", "--tenant", "ghosts"),
        1,
        "no tenant 'ghosts'",
    )
    assert not any(k["name"] == "lost" for k in listing(world, "keys"))
    _, in_config = create_key(world, "--name", "cfg-member", "--tenant", "cfg-team")
    assert {k["key_id"]: k for k in listing(world, "keys")}[in_config]["tenant"] == "cfg-team"


def test_authenticate_carries_the_key_budget_and_the_tenant_limits(
    world: tuple[RunningMesh, RedisServer],
) -> None:
    mesh, _ = world
    ok(meshgate(world, "tenants", "create", "--id", "team-b", "--rpm", "50", "--budget-usd", "2"))
    secret, key_id = create_key(
        world,
        "--name",
        "b-member",
        "--tenant",
        "team-b",
        "--rpm",
        "10",
        "--budget-usd",
        "3.000125",
        "--budget-period",
        "month",
    )
    principal = authenticate(mesh, secret)
    assert principal.key_id == key_id and principal.tenant == "team-b"
    assert principal.limits == common_pb2.Limits(
        requests_per_minute=10,
        budget_micro_usd=3_000_125,
        budget_period=common_pb2.BUDGET_PERIOD_MONTH,
    )
    assert principal.tenant_limits == common_pb2.Limits(
        requests_per_minute=50,
        budget_micro_usd=2_000_000,
        budget_period=common_pb2.BUDGET_PERIOD_TOTAL,
    )

    config_member, _ = create_key(world, "--name", "cfg-member-2", "--tenant", "cfg-team")
    assert authenticate(mesh, config_member).tenant_limits == common_pb2.Limits(
        requests_per_minute=7, budget_micro_usd=500_000, budget_period=common_pb2.BUDGET_PERIOD_DAY
    )

    loner, _ = create_key(world, "--name", "loner")
    alone = authenticate(mesh, loner)
    assert alone.tenant == "" and alone.tenant_limits == common_pb2.Limits()


def test_a_key_update_reaches_the_edge_within_a_second_without_a_new_secret(
    world: tuple[RunningMesh, RedisServer],
) -> None:
    mesh, _ = world
    secret, key_id = create_key(world, "--name", "growing", "--rpm", "1000")
    chat = {
        "model": "meshgate/reference-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
    }
    with httpx.Client(
        base_url=mesh.origin, timeout=10, headers={"Authorization": f"Bearer {secret}"}
    ) as http:

        def rpm_limit() -> str:
            answer = http.post("/v1/chat/completions", json=chat)
            assert answer.status_code == 200, answer.text
            return answer.headers["x-ratelimit-limit-requests"]

        assert rpm_limit() == "1000"  # now cached, for 5 s, at the edge and at auth
        updated = meshgate(world, "keys", "update", key_id, "--rpm", "2000", "--budget-usd", "1")
        assert ok(updated) == f"updated {key_id} (growing): rpm=2000 budget_usd=1.00\n"
        assert "sk-" not in updated.stdout + updated.stderr
        seen = within(PROPAGATION_S, lambda: rpm_limit() == "2000")
    print(f"key update seen at the edge after {seen * 1000:.0f} ms")
    assert authenticate(mesh, secret).limits.budget_micro_usd == 1_000_000

    refused(meshgate(world, "keys", "update", "key_0000000000000000", "--rpm", "1"), 1, "no key")
    refused(meshgate(world, "keys", "update", key_id), 1, "nothing to update")


def test_a_tenant_update_reaches_auth_and_its_watchers_within_a_second(
    world: tuple[RunningMesh, RedisServer],
) -> None:
    mesh, _ = world
    ok(meshgate(world, "tenants", "create", "--id", "team-c", "--rpm", "30"))
    secret, _ = create_key(world, "--name", "c-member", "--tenant", "team-c")
    assert authenticate(mesh, secret).tenant_limits.requests_per_minute == 30  # cached for 5 s

    events: queue.Queue[auth_pb2.WatchKeyEventsResponse] = queue.Queue()
    channel = grpc.insecure_channel(mesh.config.services.auth.dial_target())
    watch = auth_pb2_grpc.AuthServiceStub(channel).WatchKeyEvents(
        auth_pb2.WatchKeyEventsRequest(), timeout=30
    )

    def follow() -> None:
        try:
            for event in watch:
                events.put(event)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    threading.Thread(target=follow, daemon=True).start()
    try:
        assert events.get(timeout=5) == auth_pb2.WatchKeyEventsResponse()  # the watch is live
        updated = meshgate(world, "tenants", "update", "team-c", "--rpm", "60", "--budget-usd", "9")
        assert ok(updated) == "updated tenant team-c: rpm=60 budget_usd=9.00\n"
        seen = within(
            PROPAGATION_S,
            lambda: authenticate(mesh, secret).tenant_limits.requests_per_minute == 60,
        )
        assert events.get(timeout=PROPAGATION_S) == auth_pb2.WatchKeyEventsResponse(tenant="team-c")
    finally:
        watch.cancel()
        channel.close()
    print(f"tenant update seen by auth after {seen * 1000:.0f} ms")
    assert authenticate(mesh, secret).tenant_limits.budget_micro_usd == 9_000_000


def test_listings_show_what_is_left_of_each_budget_and_never_a_secret(
    world: tuple[RunningMesh, RedisServer],
) -> None:
    mesh, redis = world
    shards = mesh.config.quota.shards
    ok(meshgate(world, "tenants", "create", "--id", "team-d", "--budget-usd", "10"))
    secret, key_id = create_key(
        world,
        "--name",
        "d-member",
        "--tenant",
        "team-d",
        "--budget-usd",
        "1.5",
        "--budget-period",
        "day",
    )
    now = time.time()
    key_state = key_prefix(shard_of("team-d", key_id, shards), key_id)
    tenant_state = tenant_prefix(shard_of("team-d", "", shards), "team-d")
    with redis.client() as r:  # what quota would have counted, in micro-dollars
        r.set(spent_usd_key(key_state, period_id("day", now)), 250_001)
        r.set(spent_usd_key(key_state, period_id("day", now - 86400)), 999_999)  # yesterday's
        r.set(spent_usd_key(tenant_state, period_id("total", now)), 10_500_000)  # overspent

    key = {k["key_id"]: k for k in listing(world, "keys")}[key_id]
    assert (key["budget_usd"], key["budget_period"]) == ("1.500000", "day")
    assert (key["spent_usd"], key["remaining_usd"]) == ("0.250001", "1.249999")
    tenant = {t["id"]: t for t in listing(world, "tenants")}["team-d"]
    assert (tenant["spent_usd"], tenant["remaining_usd"]) == ("10.500000", "0.000000")

    table = ok(meshgate(world, "keys", "list"))
    row = next(line.split() for line in table.splitlines() if line.startswith(key_id))
    assert row[2] == "team-d" and row[-6:-3] == ["$1.50", "day", "$1.249999"]
    _, plain = create_key(world, "--name", "d-plain")
    unlimited = {k["key_id"]: k for k in listing(world, "keys")}[plain]
    assert unlimited["remaining_usd"] is None and unlimited["tenant"] is None

    outputs = [
        meshgate(world, group, "list", *fmt)
        for group in ("keys", "tenants")
        for fmt in ((), ("--format", "json"))
    ]
    for result in outputs:
        text = result.stdout + result.stderr
        assert secret not in text and secret[6:20] not in text and "sk-mg-" not in text
