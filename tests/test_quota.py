"""Limits hold exactly under concurrency, across 2 quota replicas, 2 auth replicas and 2 edges.

Real Redis (owned by the test), real processes, real HTTP. Buckets refill
continuously, so each check allows for what the refill could add during the
burst; the overshoot beyond that must be 0.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import grpc
import httpx
import openai
import pytest

from meshgate import shards, tokens
from meshgate.config import TenantConfig
from meshgate.v1 import common_pb2, inference_pb2, quota_pb2, quota_pb2_grpc, usage_pb2
from services.auth.keys import RedisKeyStore, digest
from tests.conftest import RunningMesh, free_ports
from tests.support import RedisServer, Replica, metric, usage_json

PRO = "meshgate/reference-pro"
TOKEN_DELAY_MS = 20


@dataclass
class Stack:
    mesh: RunningMesh
    redis: RedisServer
    origins: list[str]  # two edges

    def key(self, **limits: Any) -> tuple[str, str]:
        """A fresh key with these limits: (secret, key_id)."""

        async def create() -> tuple[str, str]:
            from redis.asyncio import Redis

            store = RedisKeyStore(Redis.from_url(self.redis.url))
            try:
                secret, record = await store.create(name="test", **limits)
            finally:
                await store.redis.aclose()
            return secret, record.principal.key_id

        return asyncio.run(create())


@pytest.fixture(scope="module")
def stack(start_mesh: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis = RedisServer().start()
    q1, q2, a1, a2, e2, engine_metrics = free_ports(6)
    overrides = {
        "redis": {"url": redis.url},
        "services": {
            "quota": {"port": q1, "target": f"ipv4:127.0.0.1:{q1},127.0.0.1:{q2}"},
            "auth": {"port": a1, "target": f"ipv4:127.0.0.1:{a1},127.0.0.1:{a2}"},
            "engine": {"token_delay_ms": TOKEN_DELAY_MS, "metrics_port": engine_metrics},
        },
    }
    from tests.conftest import write_config

    config_path = write_config(tmp_path_factory.mktemp("replicas"), overrides)
    # Second replicas start first, so the edges' round_robin finds both ready.
    replicas = [
        Replica("quota", config_path, {"MESHGATE_SERVICES__QUOTA__PORT": str(q2)}).wait_grpc(
            f"127.0.0.1:{q2}"
        ),
        Replica("auth", config_path, {"MESHGATE_SERVICES__AUTH__PORT": str(a2)}).wait_grpc(
            f"127.0.0.1:{a2}"
        ),
    ]
    mesh = start_mesh(**overrides)
    edge2 = Replica("edge", mesh.config_path, {"MESHGATE_EDGE__PORT": str(e2)})
    edge2.wait_http(f"http://127.0.0.1:{e2}/readyz")
    replicas.append(edge2)
    try:
        yield Stack(mesh, redis, [mesh.origin, f"http://127.0.0.1:{e2}"])
    finally:
        for replica in replicas:
            replica.stop()
        assert mesh.stop() == 0
        redis.kill()


def keys_for(key_id: str, tenant: str = "") -> list[str]:
    """A key's requests, tokens, leases and spent-tokens keys (meshgate/shards.py)."""
    prefix = shards.key_prefix(shards.shard_of(tenant, key_id, 16), key_id)
    return [f"{prefix}:requests", f"{prefix}:tokens", f"{prefix}:leases", f"{prefix}:spent"]


def _settlement(
    principal: common_pb2.Principal, lease: quota_pb2.ReserveResponse, used: int = 0
) -> quota_pb2.Settlement:
    """What the edge sends when a request that reserved `lease` used `used` tokens (10 of prompt)."""
    record = usage_pb2.UsageRecord(
        id=lease.lease_id,
        key_id=principal.key_id,
        tenant=principal.tenant,
        model=PRO,
        started_unix_us=time.time_ns() // 1000,
        prompt_tokens=min(used, 10),
        completion_tokens=max(used - 10, 0),
    )
    return quota_pb2.Settlement(
        key_limits=principal.limits,
        tenant_limits=principal.tenant_limits,
        reserved_tokens=lease.reserved_tokens,
        reserved_micro_usd=lease.reserved_micro_usd,
        record=record,
    )


def _chat(max_tokens: int = 1, content: str = "hi", stream: bool = False) -> dict[str, Any]:
    return {
        "model": PRO,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "seed": 1,
        "stream": stream,
    }


def _cost(body: dict[str, Any]) -> int:
    messages = [
        inference_pb2.ChatMessage(role=m["role"], text=m["content"]) for m in body["messages"]
    ]
    return tokens.count_messages(messages) + int(body["max_tokens"])


async def _burst(
    origins: list[str], secret: str, bodies: list[dict[str, Any]]
) -> tuple[list[httpx.Response], float]:
    """Fire every body at once, alternating edges; return the responses and the burst's duration."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        headers = {"Authorization": f"Bearer {secret}"}
        started = time.monotonic()
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{origins[i % len(origins)]}/v1/chat/completions", json=body, headers=headers
                )
                for i, body in enumerate(bodies)
            )
        )
        return list(responses), time.monotonic() - started


def test_rpm_is_exact_under_200_concurrent_requests(stack: Stack) -> None:
    rpm = 50
    secret, _ = stack.key(rpm=rpm)
    responses, window = asyncio.run(_burst(stack.origins, secret, [_chat() for _ in range(200)]))
    statuses = [r.status_code for r in responses]
    admitted = statuses.count(200)
    assert statuses.count(429) == 200 - admitted, set(statuses)
    refill = math.floor(window * rpm / 60)
    allowed = rpm + refill
    print(
        f"\nrpm={rpm}: admitted {admitted} of 200 in {window:.2f}s (allowed {allowed}, overshoot {max(0, admitted - allowed)})"
    )
    assert rpm <= admitted <= allowed
    if window < 60 / rpm:
        assert admitted == rpm
    for response in responses:
        if response.status_code != 429:
            continue
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        wait_ms = int(response.headers["retry-after-ms"])
        assert 0 < wait_ms <= math.ceil(60_000 / rpm)  # at most one token's refill time
        assert 0 <= int(response.headers["retry-after"]) - wait_ms / 1000 < 1
        assert response.headers["x-ratelimit-limit-requests"] == str(rpm)
        assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_retry_after_is_the_true_refill_time(stack: Stack) -> None:
    rpm = 60
    secret, _ = stack.key(rpm=rpm)
    with httpx.Client(
        base_url=stack.origins[0], timeout=30, headers={"Authorization": f"Bearer {secret}"}
    ) as http:
        statuses = [http.post("/v1/chat/completions", json=_chat()).status_code for _ in range(rpm)]
        assert statuses == [200] * rpm
        denied = http.post("/v1/chat/completions", json=_chat())
        assert denied.status_code == 429
        wait_ms = int(denied.headers["retry-after-ms"])
        assert 0 < wait_ms <= 1000
        if wait_ms > 400:
            time.sleep((wait_ms - 300) / 1000)
            assert http.post("/v1/chat/completions", json=_chat()).status_code == 429  # not yet
            time.sleep(0.35)
        else:
            time.sleep(wait_ms / 1000 + 0.05)
        assert http.post("/v1/chat/completions", json=_chat()).status_code == 200  # and now it fits


def test_the_sdk_honours_retry_after(stack: Stack) -> None:
    rpm = 60
    secret, _ = stack.key(rpm=rpm)
    base_url = stack.origins[0] + "/v1"
    with openai.OpenAI(base_url=base_url, api_key=secret, max_retries=0) as strict:
        started = time.monotonic()
        for _ in range(rpm):
            strict.chat.completions.create(**_chat())  # type: ignore[call-overload]
        # The bucket refills one request a second: on a slow machine the 60 take longer
        # than that, and what refilled meanwhile is admitted before the first 429.
        refilled = 0
        with pytest.raises(openai.RateLimitError):
            while refilled <= (time.monotonic() - started) * rpm / 60 + 1:
                strict.chat.completions.create(**_chat())  # type: ignore[call-overload]
                refilled += 1
    waits: list[float] = []  # the retry-after-ms of each 429 the patient client got

    def record(response: httpx.Response) -> None:
        if response.status_code == 429:
            waits.append(float(response.headers["retry-after-ms"]) / 1000)

    hooked = httpx.Client(event_hooks={"response": [record]})
    with openai.OpenAI(
        base_url=base_url, api_key=secret, max_retries=3, http_client=hooked
    ) as patient:
        started = time.monotonic()
        raw = patient.chat.completions.with_raw_response.create(**_chat())  # type: ignore[call-overload]
        elapsed = time.monotonic() - started
    assert raw.http_response.status_code == 200
    assert raw.retries_taken >= 1 and len(waits) == raw.retries_taken
    # It waited what the bucket asked (retry-after-ms, at most 1 s here), not the SDK's own
    # backoff guess; how long the bucket asks depends on how fast the 60 requests went.
    assert all(0 < wait <= 1.0 for wait in waits)
    assert sum(waits) <= elapsed < sum(waits) + 3


def test_tpm_is_exact_with_mixed_request_sizes(stack: Stack) -> None:
    tpm = 3000
    secret, _ = stack.key(tpm=tpm)
    sizes = [1, 2, 4, 8]
    bodies = [
        _chat(max_tokens=sizes[i % 4], content="word " * (5 + (i * 7) % 60)) for i in range(200)
    ]
    responses, window = asyncio.run(_burst(stack.origins, secret, bodies))
    used = 0
    for response in responses:
        assert response.status_code in (200, 429), response.text
        if response.status_code == 200:
            usage = response.json()["usage"]
            used += usage["total_tokens"]
        else:
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
            assert int(response.headers["retry-after-ms"]) > 0
    allowed = tpm + math.floor(window * tpm / 60)
    print(
        f"\ntpm={tpm}: {used} tokens admitted in {window:.2f}s (allowed {allowed}, overshoot {max(0, used - allowed)})"
    )
    assert used <= allowed
    largest = max(_cost(body) for body in bodies)
    assert used >= tpm - largest  # the bucket was filled, not starved: what is left fits no request


async def _streams_with_cap(origin: str, secret: str, workers: int, refusals: list[str]) -> int:
    """Each worker retries on 429 until it has streamed one whole answer; returns how many did."""
    streamed = 0
    async with httpx.AsyncClient(
        timeout=30, limits=httpx.Limits(max_connections=workers)
    ) as client:

        async def worker() -> None:
            nonlocal streamed
            while True:
                async with client.stream(
                    "POST",
                    f"{origin}/v1/chat/completions",
                    json=_chat(max_tokens=15, stream=True),
                    headers={"Authorization": f"Bearer {secret}"},
                ) as response:
                    if response.status_code == 429:
                        await response.aread()
                        refusals.append(response.json()["error"]["message"])
                        await asyncio.sleep(0.05)
                        continue
                    assert response.status_code == 200
                    body = b"".join([chunk async for chunk in response.aiter_bytes()])
                    assert body.endswith(b"data: [DONE]\n\n")
                    streamed += 1
                    return

        await asyncio.gather(*(worker() for _ in range(workers)))
    return streamed


def test_concurrency_cap_holds_for_20_parallel_streams(stack: Stack) -> None:
    """Counted where the streams run: the engine's own gauge, sampled every few ms.

    (Intervals seen by one client loop would skew: a slot freed and retaken within
    a millisecond can look like an overlap when the loop runs late.)
    """
    secret, _ = stack.key(max_concurrency=3)
    port = stack.mesh.config.services.engine.metrics_port
    refusals: list[str] = []
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(metric(port, "meshgate_engine_active_streams"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        streamed = asyncio.run(
            _streams_with_cap(stack.origins[0], secret, workers=20, refusals=refusals)
        )
    finally:
        done.set()
        sampler.join()
    assert streamed == 20
    peak = max(samples)
    print(
        f"\nmax_concurrency=3: peak of {peak:g} streams at once in the engine "
        f"({len(samples)} samples) over 20 streams, {len(refusals)} refusals"
    )
    assert peak == 3  # never more than the cap, and the cap was reached ...
    assert refusals and all(
        "Too many concurrent requests" in m for m in refusals
    )  # ... and refused the rest


async def _abandon_streams(origin: str, secret: str, count: int) -> None:
    """Open `count` streams, read their first event, then hang up."""
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(count):
            async with client.stream(
                "POST",
                f"{origin}/v1/chat/completions",
                json=_chat(max_tokens=200, stream=True),
                headers={"Authorization": f"Bearer {secret}"},
            ) as response:
                assert response.status_code == 200
                async for _ in response.aiter_bytes():
                    break


def test_leases_come_back_after_clients_disconnect(stack: Stack) -> None:
    secret, key_id = stack.key(max_concurrency=3)
    asyncio.run(_abandon_streams(stack.origins[0], secret, 3))
    leases = keys_for(key_id)[2]
    deadline = time.monotonic() + 2
    with stack.redis.client() as r:
        while r.zcard(leases) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.zcard(leases) == 0
    with httpx.Client(
        base_url=stack.origins[1], timeout=30, headers={"Authorization": f"Bearer {secret}"}
    ) as http:
        assert [http.post("/v1/chat/completions", json=_chat()).status_code for _ in range(3)] == [
            200
        ] * 3


def test_a_cancelled_stream_is_billed_for_what_it_got(stack: Stack) -> None:
    secret, key_id = stack.key(budget_tokens=100_000)
    max_tokens, read = 40, 6
    body = _chat(max_tokens=max_tokens, stream=True, content="Tell me a long story")

    async def cancel_after(events: int) -> int:
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream(
                "POST",
                f"{stack.origins[0]}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {secret}"},
            ) as response:
                seen = 0
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"delta":{"content":' in line:
                        seen += 1
                        if seen == events:
                            break
                return seen

    seen = asyncio.run(cancel_after(read))
    assert seen == read
    with httpx.Client(base_url=stack.origins[0], timeout=30) as http:
        whole = http.post(
            "/v1/chat/completions",
            json={**body, "stream": False},
            headers={"Authorization": f"Bearer {stack.mesh.api_key}"},
        ).json()
    prompt = whole["usage"]["prompt_tokens"]
    spent_key = keys_for(key_id)[3]
    deadline = time.monotonic() + 3
    with stack.redis.client() as r:
        while time.monotonic() < deadline:
            spent = int(r.get(spent_key) or 0)
            if spent < prompt + max_tokens:  # settled
                break
            time.sleep(0.02)
    print(
        f"\ncancelled after {read} tokens: charged {spent - prompt} completion tokens (max_tokens {max_tokens})"
    )
    charged = spent - prompt
    assert read <= charged <= read + 3  # about k: what was sent, give or take the events in flight


def test_spent_budget_is_insufficient_quota(stack: Stack) -> None:
    secret, _ = stack.key(budget_tokens=60)
    sent: list[str] = []
    counting = httpx.Client(event_hooks={"request": [lambda r: sent.append(r.url.path)]})
    with openai.OpenAI(
        base_url=stack.origins[0] + "/v1", api_key=secret, max_retries=2, http_client=counting
    ) as client:
        client.chat.completions.create(**_chat(max_tokens=5))  # type: ignore[call-overload]
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**_chat(max_tokens=50))  # type: ignore[call-overload]
    # x-should-retry: false, so the SDK (max_retries=2) sent the refused request once.
    assert sent == ["/v1/chat/completions"] * 2
    assert info.value.code == "insufficient_quota"
    assert info.value.type == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.body["doc_url"].endswith("/usage")  # type: ignore[index]  # the dashboard


def test_every_authenticated_response_has_rate_limit_headers(stack: Stack) -> None:
    secret, _ = stack.key(rpm=100, tpm=100_000)
    names = [
        f"x-ratelimit-{kind}-{what}"
        for kind in ("limit", "remaining", "reset")
        for what in ("requests", "tokens")
    ]
    with httpx.Client(
        base_url=stack.origins[0], timeout=30, headers={"Authorization": f"Bearer {secret}"}
    ) as http:
        responses = [
            http.post("/v1/chat/completions", json=_chat()),
            http.post("/v1/chat/completions", json=_chat(stream=True)),
            http.post("/v1/completions", json={"model": PRO, "prompt": "x", "max_tokens": 2}),
            http.post("/v1/embeddings", json={"model": "bge-m3", "input": "x"}),
            http.get("/v1/models"),
            http.get(f"/v1/models/{PRO}"),
            http.post("/v1/chat/completions", json={"model": PRO}),  # 400 after auth
            http.post(
                "/v1/chat/completions", json=_chat() | {"model": "nope"}
            ),  # 404 after reserve
        ]
    for response in responses:
        missing = [n for n in names if n not in response.headers]
        assert not missing, (response.request.url, response.status_code, missing)
    assert responses[0].headers["x-ratelimit-limit-requests"] == "100"
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in responses[:4]]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] > remaining[-1]


def test_revocation_reaches_both_auth_replicas_within_a_second(stack: Stack) -> None:
    secret, key_id = stack.key()

    def status(http: httpx.Client) -> int:
        return http.get("/v1/models").status_code

    clients = [
        httpx.Client(base_url=o, timeout=10, headers={"Authorization": f"Bearer {secret}"})
        for o in stack.origins
    ]
    try:
        assert [status(c) for c in clients for _ in range(4)] == [
            200
        ] * 8  # both auth replicas have cached it

        async def revoke() -> None:
            from redis.asyncio import Redis

            store = RedisKeyStore(Redis.from_url(stack.redis.url))
            try:
                assert await store.revoke(key_id) is not None
            finally:
                await store.redis.aclose()

        asyncio.run(revoke())
        revoked_at = time.monotonic()
        first_refusal = None
        while time.monotonic() - revoked_at < 1.5:
            results = [status(c) for c in clients for _ in range(2)]
            if all(code == 401 for code in results):
                first_refusal = first_refusal or time.monotonic() - revoked_at
            else:
                assert first_refusal is None, "a revoked key was accepted again"
        assert first_refusal is not None and first_refusal < 1.0
        print(f"\nrevocation seen by every replica after {first_refusal * 1000:.0f} ms")
        error = clients[0].get("/v1/models").json()["error"]
        assert error["code"] == "revoked_api_key"
    finally:
        for c in clients:
            c.close()


def test_expired_and_model_restricted_keys(stack: Stack) -> None:
    async def create() -> tuple[str, str]:
        from redis.asyncio import Redis

        store = RedisKeyStore(Redis.from_url(stack.redis.url))
        try:
            expired, _ = await store.create(name="old", expires_at=time.time() + 0.3)
            narrow, _ = await store.create(name="narrow", models=("meshgate/reference-mini",))
        finally:
            await store.redis.aclose()
        return expired, narrow

    expired, narrow = asyncio.run(create())
    time.sleep(0.4)
    with httpx.Client(base_url=stack.origins[0], timeout=10) as http:
        response = http.get("/v1/models", headers={"Authorization": f"Bearer {expired}"})
        assert response.status_code == 401 and response.json()["error"]["code"] == "expired_api_key"
        listed = http.get("/v1/models", headers={"Authorization": f"Bearer {narrow}"}).json()
        assert [m["id"] for m in listed["data"]] == ["meshgate/reference-mini"]
        refused = http.post(
            "/v1/chat/completions", json=_chat(), headers={"Authorization": f"Bearer {narrow}"}
        )
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"


def test_tenants_do_not_share_quota(stack: Stack) -> None:
    first, _ = stack.key(rpm=3)
    second, _ = stack.key(rpm=3)
    with httpx.Client(base_url=stack.origins[0], timeout=10) as http:
        codes = [
            http.post(
                "/v1/chat/completions", json=_chat(), headers={"Authorization": f"Bearer {first}"}
            ).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        assert (
            http.post(
                "/v1/chat/completions", json=_chat(), headers={"Authorization": f"Bearer {second}"}
            ).status_code
            == 200
        )


def test_a_crashed_edge_leaves_a_lease_that_lapses_by_ttl(start_mesh: Any) -> None:
    """kill -9 of the edge holding a stream: nobody settles, so the lease must expire on its own."""
    redis = RedisServer().start()
    (edge_port,) = free_ports(1)
    # A short request timeout gives a short lease TTL (timeout + 5 s).
    mesh = start_mesh(
        redis={"url": redis.url},
        edge={"request_timeout_s": 2},
        services={"engine": {"token_delay_ms": 50}},
    )
    doomed = Replica("edge", mesh.config_path, {"MESHGATE_EDGE__PORT": str(edge_port)})
    try:
        doomed.wait_http(f"http://127.0.0.1:{edge_port}/readyz")
        stack = Stack(mesh, redis, [mesh.origin])
        secret, key_id = stack.key(max_concurrency=1)
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(timeout=30, headers=headers) as http:
            with http.stream(
                "POST",
                f"http://127.0.0.1:{edge_port}/v1/chat/completions",
                json=_chat(max_tokens=30, stream=True),
            ) as held:
                assert held.status_code == 200
                orphan = held.headers["x-request-id"]
                next(held.iter_bytes())
                doomed.proc.kill()
                doomed.proc.wait()
            crashed_at = time.monotonic()
            assert http.post(f"{mesh.origin}/v1/chat/completions", json=_chat()).status_code == 429
            while (
                code := http.post(f"{mesh.origin}/v1/chat/completions", json=_chat()).status_code
            ) == 429:
                assert time.monotonic() - crashed_at < 10, "the lease never lapsed"
                time.sleep(0.25)
            assert code == 200
            lapsed = time.monotonic() - crashed_at
        print(f"\nlease of a crashed edge lapsed after {lapsed:.1f}s (ttl 7 s)")
        assert lapsed > 3  # it was held by the TTL, not released early
        # Nobody settled it, yet it is on the record once: the sweep wrote what was reserved.
        deadline = time.monotonic() + 15
        while not (records := _records_of(mesh, key_id, orphan)):
            assert time.monotonic() < deadline, "the crashed edge's request was never recorded"
            time.sleep(0.5)
        assert [(r["outcome"], r["completion_tokens"]) for r in records] == [("expired", 30)]
    finally:
        doomed.stop()
        assert mesh.stop() == 0
        redis.kill()


def test_settlements_ride_on_reserve_first_and_count_once(stack: Stack) -> None:
    """A Reserve applies the settlements it carries before deciding; a repeated one is a no-op."""
    secret, key_id = stack.key(max_concurrency=1, budget_tokens=10_000)
    principal = asyncio.run(_principal(stack, secret))
    spent_key = keys_for(key_id)[3]
    with grpc.insecure_channel(f"127.0.0.1:{stack.mesh.config.services.quota.port}") as channel:
        quota = quota_pb2_grpc.QuotaServiceStub(channel)

        def reserve(*settled: quota_pb2.Settlement) -> quota_pb2.ReserveResponse:
            request = quota_pb2.ReserveRequest(
                principal=principal, prompt_tokens=10, max_tokens=90, settlements=settled
            )
            response: quota_pb2.ReserveResponse = quota.Reserve(request, timeout=5)
            return response

        def settlement(lease: quota_pb2.ReserveResponse, used: int) -> quota_pb2.Settlement:
            return _settlement(principal, lease, used)

        first = reserve()
        with pytest.raises(grpc.RpcError) as refused:
            reserve()  # the one concurrency slot is held
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with stack.redis.client() as r:
            assert int(r.get(spent_key)) == 100

            second = reserve(settlement(first, used=15))  # frees the slot, then takes it
            assert int(r.get(spent_key)) == 100 - 85 + 100

            # Delivered again (a retried call): neither path refunds twice.
            quota.SettleMany(quota_pb2.SettleManyRequest(settlements=[settlement(first, 15)]))
            with pytest.raises(grpc.RpcError):
                reserve(settlement(first, used=15))  # still full: `second` holds the slot
            assert int(r.get(spent_key)) == 115

            quota.Settle(quota_pb2.SettleRequest(settlement=settlement(second, 40)), timeout=5)
            quota.Settle(quota_pb2.SettleRequest(settlement=settlement(second, 40)), timeout=5)
            assert int(r.get(spent_key)) == 15 + 40
            assert r.zcard(keys_for(key_id)[2]) == 0


def test_a_settlement_redis_refuses_does_not_refuse_the_reservation_carrying_it(
    stack: Stack,
) -> None:
    """A key whose lease set Redis cannot update (wrong type) poisons only its own settlement."""
    bad_secret, bad_id = stack.key(max_concurrency=2)
    good_secret, good_id = stack.key(max_concurrency=1)
    bad, good = (
        asyncio.run(_principal(stack, bad_secret)),
        asyncio.run(_principal(stack, good_secret)),
    )
    with grpc.insecure_channel(f"127.0.0.1:{stack.mesh.config.services.quota.port}") as channel:
        quota = quota_pb2_grpc.QuotaServiceStub(channel)
        lease = quota.Reserve(quota_pb2.ReserveRequest(principal=bad, prompt_tokens=5), timeout=5)
        with stack.redis.client() as r:
            r.delete(keys_for(bad_id)[2])
            r.set(keys_for(bad_id)[2], "not a sorted set")  # ZREM now fails with WRONGTYPE
        poison = _settlement(bad, lease)
        first = quota.Reserve(
            quota_pb2.ReserveRequest(principal=good, prompt_tokens=5, settlements=[poison]),
            timeout=5,
        )
        assert first.lease_id  # admitted although the settlement it carried was refused
        settle = _settlement(good, first)
        second = quota.Reserve(
            quota_pb2.ReserveRequest(principal=good, prompt_tokens=5, settlements=[poison, settle]),
            timeout=5,
        )
        assert second.lease_id  # the good settlement in the same batch still freed the slot
    with stack.redis.client() as r:
        assert r.zcard(keys_for(good_id)[2]) == 1
        r.delete(keys_for(bad_id)[2])


async def _principal(stack: Stack, secret: str) -> common_pb2.Principal:
    from redis.asyncio import Redis

    store = RedisKeyStore(Redis.from_url(stack.redis.url))
    try:
        record = await store.lookup(digest(secret))
    finally:
        await store.redis.aclose()
    assert record is not None
    return record.principal


def _worst_case_micro_usd(body: dict[str, Any]) -> int:
    """What admission reserves for `body` on the sample's reference-pro: input $0.5, output
    $1.5 per million tokens, i.e. 500,000 and 1,500,000 pico-dollars a token, rounded up."""
    prompt = _cost(body) - int(body["max_tokens"])
    pico = prompt * 500_000 + int(body["max_tokens"]) * 1_500_000
    return -(-pico // 1_000_000)


def _usage_records(mesh: RunningMesh, key_id: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = usage_json(
        mesh, "--key", key_id, "--records", "--limit", "1000"
    )
    return records


def _records_of(mesh: RunningMesh, key_id: str, request_id: str) -> list[dict[str, Any]]:
    return [r for r in _usage_records(mesh, key_id) if r["request_id"] == request_id]


def _ledger_spend(stack: Stack, key_id: str, expected: int) -> Decimal:
    """The key's spend as `meshgate usage` reports it, once `expected` records are in."""
    deadline = time.monotonic() + 20
    while len(records := _usage_records(stack.mesh, key_id)) < expected:
        assert time.monotonic() < deadline, f"{len(records)} of {expected} records"
        time.sleep(0.5)
    assert len(records) == expected
    return sum((Decimal(str(r["cost_usd"])) for r in records), Decimal(0))


def _budget_burst(stack: Stack, secrets: list[str]) -> list[httpx.Response]:
    """100 requests at once over both edges, whose true cost is their worst case
    (`ignore_eos`: always `max_tokens` tokens), so no refund can make room mid-burst."""
    body = {**_chat(max_tokens=8), "ignore_eos": True}

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            f"{stack.origins[i % 2]}/v1/chat/completions",
                            json=body,
                            headers={"Authorization": f"Bearer {secrets[i % len(secrets)]}"},
                        )
                        for i in range(100)
                    )
                )
            )

    return asyncio.run(burst())


def _check_budget_verdicts(responses: list[httpx.Response], k: int) -> None:
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    print(f"\ndollar budget for {k} requests: {len(admitted)} admitted, {len(refused)} refused")
    assert (len(admitted), len(refused)) == (k, 100 - k)
    for response in refused:
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
        assert response.headers["x-should-retry"] == "false"
        assert error["doc_url"]


def test_a_dollar_budget_admits_exactly_what_fits_across_replicas(stack: Stack) -> None:
    k = 7
    body = {**_chat(max_tokens=8), "ignore_eos": True}
    budget = Decimal(k * _worst_case_micro_usd(body)) / 10**6
    secret, key_id = stack.key(budget_usd=budget)
    responses = _budget_burst(stack, [secret])
    _check_budget_verdicts(responses, k)
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-budget-usd"] == f"{budget:.6f}"
    spend = _ledger_spend(stack, key_id, k)
    print(f"ledger spend {spend} of a budget of {budget}")
    assert spend <= budget
    assert spend == budget  # the true cost was the worst case, to the pico-dollar


def test_a_tenant_dollar_budget_holds_across_its_keys(stack: Stack) -> None:
    k = 5
    body = {**_chat(max_tokens=8), "ignore_eos": True}
    budget = Decimal(k * _worst_case_micro_usd(body)) / 10**6

    async def tenant() -> str:
        from redis.asyncio import Redis

        store = RedisKeyStore(Redis.from_url(stack.redis.url))
        tenant_id = f"team-{time.monotonic_ns()}"
        try:
            await store.create_tenant(TenantConfig(id=tenant_id, budget_usd=budget))
        finally:
            await store.redis.aclose()
        return tenant_id

    tenant_id = asyncio.run(tenant())
    (a, a_id), (b, b_id) = stack.key(tenant=tenant_id), stack.key(tenant=tenant_id)
    responses = _budget_burst(stack, [a, b])
    _check_budget_verdicts(responses, k)
    admitted = sum(r.status_code == 200 for r in responses[0::2])
    spend = _ledger_spend(stack, a_id, admitted) + _ledger_spend(stack, b_id, k - admitted)
    assert spend == budget
