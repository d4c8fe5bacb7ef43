"""On a real Redis Cluster (3 masters, 3 replicas), given only `REDIS_URL` naming one node:
keys, exact limits on every master, revocation, and a master killed mid-run."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from meshgate import redis_client, shards
from meshgate.config import RedisConfig
from services.auth.keys import KEY_PREFIX, RedisKeyStore, key_id
from tests.conftest import RunningMesh, launch_mesh, meshgate_cmd, subprocess_env
from tests.support import RedisClusterNodes, usage_json

PRO = "meshgate/reference-pro"
BODY = {"model": PRO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SHARDS = 16  # quota.shards' default
# No request may take longer than this, even while a master fails over.
HANG_S = 3.0


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningMesh, RedisClusterNodes]]:
    cluster = RedisClusterNodes(masters=3, replicas=1).start()
    mesh = launch_mesh(
        tmp_path_factory.mktemp("cluster-mesh"),
        env={"REDIS_URL": cluster.url},
        args=("--replicas", "quota=2,auth=2"),
    )
    try:
        yield mesh, cluster
    finally:
        code = mesh.stop()
        cluster.cleanup()
        assert code == 0, mesh.output()


def keys(cluster: RedisClusterNodes, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshgate_cmd("keys", *args),
        env=subprocess_env({"REDIS_URL": cluster.url}),
        capture_output=True,
        text=True,
        timeout=30,
    )


def create_key(cluster: RedisClusterNodes, name: str, *limits: str) -> str:
    created = keys(cluster, "create", "--name", name, *limits)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def state_key(secret: str) -> str:
    """A key's request bucket (it has no tenant): the Redis key its master holds."""
    kid = key_id(hashlib.sha256(secret.encode()).digest())
    shard = shards.shard_of("", kid, SHARDS)
    return shards.key_prefix(shard, kid) + ":requests"


def ledger_requests(mesh: RunningMesh, kid: str, expected: int) -> int:
    """How many requests the ledger holds for the key, once it holds `expected` or 20 s pass."""
    deadline = time.monotonic() + 20
    while True:
        rows = usage_json(mesh, "--key", kid, "--group-by", "key")
        held = sum(int(row["requests"]) for row in rows)
        if held >= expected or time.monotonic() > deadline:
            return held
        time.sleep(0.5)


def chat(http: httpx.Client, secret: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = http.post(
        "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {secret}"}
    )
    return response, time.monotonic() - started


def burst(mesh: RunningMesh, secrets: list[str]) -> list[int]:
    """Every request at once (one connection each); their statuses, in order."""

    async def fire() -> list[int]:
        limits = httpx.Limits(max_connections=len(secrets), max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=mesh.origin, timeout=30, limits=limits) as http:
            responses = await asyncio.gather(
                *(
                    http.post(
                        "/v1/chat/completions",
                        json=BODY,
                        headers={"Authorization": f"Bearer {secret}"},
                    )
                    for secret in secrets
                )
            )
        return [r.status_code for r in responses]

    return asyncio.run(fire())


def test_keys_create_works_given_one_node(world: tuple[RunningMesh, RedisClusterNodes]) -> None:
    mesh, cluster = world
    secret = create_key(cluster, "first", "--rpm", "100")
    assert secret.startswith("sk-mg-")
    listed = keys(cluster, "list")
    assert listed.returncode == 0, listed.stderr
    assert "first" in listed.stdout
    with httpx.Client(base_url=mesh.origin, timeout=30) as http:
        response, _ = chat(http, secret)
    assert response.status_code == 200, response.text


def test_200_concurrent_requests_at_rpm_50_admit_exactly_50(
    world: tuple[RunningMesh, RedisClusterNodes],
) -> None:
    mesh, cluster = world
    secret = create_key(cluster, "burst", "--rpm", "50")
    started = time.monotonic()
    statuses = burst(mesh, [secret] * 200)
    refill = int((time.monotonic() - started) * 50 / 60) + 1
    assert set(statuses) <= {200, 429}, statuses
    assert 50 <= statuses.count(200) <= 50 + refill


def test_keys_on_every_master_keep_their_own_exact_limit(
    world: tuple[RunningMesh, RedisClusterNodes],
) -> None:
    mesh, cluster = world

    async def spread() -> dict[int, list[str]]:
        """Keys made through the mesh's own cluster client, until each master holds 4."""
        store = RedisKeyStore(await redis_client.open_client(RedisConfig(url=cluster.url)))
        found: dict[int, list[str]] = {}
        try:
            for n in range(80):
                secret, _ = await store.create(name=f"spread-{n}", rpm=4)
                found.setdefault(cluster.master_of(state_key(secret)).port, []).append(secret)
                if len(found) == 3 and all(len(v) >= 4 for v in found.values()):
                    break
        finally:
            await store.redis.aclose()
        return found

    by_master = asyncio.run(spread())
    assert len(by_master) == 3, "the keys' state did not reach every master"
    chosen = [secret for secrets in by_master.values() for secret in secrets[:4]]
    assert len(chosen) == 12
    started = time.monotonic()
    sent = chosen * 8
    statuses = list(zip(sent, burst(mesh, sent), strict=True))
    refill = int((time.monotonic() - started) * 4 / 60) + 1
    for secret in chosen:
        admitted = [code for s, code in statuses if s == secret].count(200)
        assert 4 <= admitted <= 4 + refill, (secret[:12], admitted)


def test_a_revoked_key_is_refused(world: tuple[RunningMesh, RedisClusterNodes]) -> None:
    mesh, cluster = world
    secret = create_key(cluster, "doomed", "--rpm", "1000")
    with httpx.Client(base_url=mesh.origin, timeout=30) as http:
        assert chat(http, secret)[0].status_code == 200
        kid = key_id(hashlib.sha256(secret.encode()).digest())
        revoked = keys(cluster, "revoke", kid)
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 5
        while True:
            response, _ = chat(http, secret)
            if response.status_code == 401:
                break
            assert time.monotonic() < deadline, "a revoked key was still admitted"
            time.sleep(0.1)
        assert response.json()["error"]["code"] == "revoked_api_key"


def test_the_ledger_drains_every_shards_stream(
    world: tuple[RunningMesh, RedisClusterNodes],
) -> None:
    _mesh, cluster = world
    client = cluster.client()
    streams = [shards.usage_stream(shard) for shard in range(SHARDS)]
    assert {cluster.master_of(stream).port for stream in streams} == {
        node.port
        for node in cluster.live()
        if node.client().info("replication")["role"] == "master"
    }, "the shards' streams do not span every master"
    deadline = time.monotonic() + 15
    while sum(int(client.xlen(stream)) for stream in streams):
        assert time.monotonic() < deadline, "the ledger did not drain the streams"
        time.sleep(0.2)
    client.close()


def test_a_slot_moved_mid_traffic_is_followed_never_a_503(
    world: tuple[RunningMesh, RedisClusterNodes],
) -> None:
    """MOVED and ASK replies (a slot migrating key by key) are followed by every service.

    The slot is crowded first, as a busy shard's is: its migration then lasts
    about 1.5 s, and all that time a script naming a key that does not exist yet
    (a lease, a new period's counter) gets TRYAGAIN, on either side."""
    mesh, cluster = world
    secret = create_key(cluster, "migrant", "--rpm", "100000", "--tpm", "100000000")
    state = state_key(secret)
    source = cluster.master_of(state)
    crowd = state.split("}")[0] + "}:crowd:"
    with source.client() as node:
        node.mset({f"{crowd}{i}": i for i in range(80)})
    target = next(node for node in cluster.masters() if node.port != source.port)
    stop = threading.Event()
    codes: list[int] = []
    failures: list[str] = []

    def traffic() -> None:
        with httpx.Client(base_url=mesh.origin, timeout=30) as http:
            while not stop.is_set():
                response = chat(http, secret)[0]
                codes.append(response.status_code)
                if response.status_code != 200:
                    failures.append(response.text)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        began = time.monotonic()
        cluster.migrate_slot(state, target, pause_s=0.015)
        migrated_in = time.monotonic() - began
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join()
    assert cluster.master_of(state).port == target.port
    assert migrated_in > 1.2, "the slot moved too fast to test the wait"
    complaints = [line for line in mesh.output().splitlines() if '"level":"info"' not in line]
    assert codes and set(codes) == {200}, (migrated_in, failures, complaints[-20:])
    # Nothing was lost on the way: one record per request, each settled once.
    kid = key_id(hashlib.sha256(secret.encode()).digest())
    assert ledger_requests(mesh, kid, len(codes)) == len(codes)
    assert "settlements refused" not in mesh.output()


def test_killing_the_master_of_a_keys_state_recovers_without_a_restart(
    world: tuple[RunningMesh, RedisClusterNodes],
) -> None:
    """The victim key's requests fail fast (503 with Retry-After) until the replica takes
    over, then succeed; a key on another master keeps being served meanwhile, though
    the edge's settlements of the victim's requests ride on its reservations."""
    mesh, cluster = world
    limits = ("--rpm", "100000", "--tpm", "100000000")
    secret = create_key(cluster, "survivor", *limits)
    victim = cluster.master_of(state_key(secret))

    def elsewhere(secret: str) -> bool:
        """Both the key's record (auth) and its state (quota) live on another master."""
        record = KEY_PREFIX + hashlib.sha256(secret.encode()).hexdigest()
        return victim.port not in {
            cluster.master_of(state_key(secret)).port,
            cluster.master_of(record).port,
        }

    other = create_key(cluster, "bystander", *limits)
    while not elsewhere(other):
        other = create_key(cluster, "bystander", *limits)
    seen: list[tuple[str, int, float]] = []
    with httpx.Client(base_url=mesh.origin, timeout=30) as http:
        assert chat(http, secret)[0].status_code == 200
        victim.kill()
        killed = time.monotonic()
        recovered = 0
        while time.monotonic() - killed < 30:
            for who, key in (("victim", secret), ("other", other)):
                response, took = chat(http, key)
                seen.append((who, response.status_code, took))
                if response.status_code == 503:
                    assert response.headers.get("retry-after"), response.text
                else:
                    assert response.status_code == 200, response.text
                if who == "victim":
                    recovered = recovered + 1 if response.status_code == 200 else 0
            if recovered >= 20 and time.monotonic() - killed > 3:
                break
            time.sleep(0.02)
    slow = [(who, took) for who, _, took in seen if took > HANG_S]
    assert not slow, f"requests hung during the failover: {slow}"
    victim_codes = [code for who, code, _ in seen if who == "victim"]
    assert 503 in victim_codes, "the failover window went unseen"
    assert recovered >= 20, f"did not recover: {victim_codes[-20:]}"
    assert cluster.master_of(state_key(secret)).port != victim.port
    # While the victim's master was down, the other key was served.
    pairs = list(zip(seen[::2], seen[1::2], strict=True))
    assert any(v[1] == 503 and o[1] == 200 for v, o in pairs), pairs
