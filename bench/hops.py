"""Each internal hop of a chat request, timed on its own at concurrency 1.

The edge runs validation (and auth, when its cache has no answer for the key)
first, then quota, then the router (which calls the engine); the settlement
rides on a later Reserve. Timing each RPC alone shows what every hop adds, and
the validation hop's share of the gateway's overhead, which the validation
issue asks the benchmark to report.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from meshgate.config import load_config
from meshgate.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    quota_pb2,
    quota_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    usage_pb2,
    validation_pb2,
    validation_pb2_grpc,
)

CALLS = 400


async def _time(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Median microseconds of `call`, after a warm-up."""
    for _ in range(20):
        await call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


async def _probe(config_path: Path, key: str, body: bytes, calls: int) -> dict[str, float]:
    config = load_config(config_path, environ={})
    services = config.services
    channels = [
        grpc.aio.insecure_channel(services.get(n).dial_target())
        for n in ("auth", "validation", "quota", "router")
    ]
    auth = auth_pb2_grpc.AuthServiceStub(channels[0])
    validation = validation_pb2_grpc.ValidationServiceStub(channels[1])
    quota = quota_pb2_grpc.QuotaServiceStub(channels[2])
    router = router_pb2_grpc.RouterServiceStub(channels[3])
    try:
        principal = (
            await auth.Authenticate(auth_pb2.AuthenticateRequest(authorization=f"Bearer {key}"))
        ).principal
        validated = await validation.ValidateChatCompletion(
            validation_pb2.ValidateChatCompletionRequest(body=body)
        )
        context = common_pb2.RequestContext(
            principal=principal, prompt_tokens=validated.prompt_tokens
        )
        routed = router_pb2.CreateChatCompletionRequest(request=validated.request, context=context)

        leases: list[quota_pb2.ReserveResponse] = []
        model = validated.request.model

        def record() -> usage_pb2.UsageRecord:
            return usage_pb2.UsageRecord(
                key_id=principal.key_id,
                tenant=principal.tenant,
                model=model,
                endpoint=usage_pb2.ENDPOINT_CHAT_COMPLETIONS,
                started_unix_us=time.time_ns() // 1000,
            )

        async def reserve_settling_the_last() -> None:
            """As the edge does: each Reserve carries the previous request's settlement."""
            settled = []
            for lease in leases[-1:]:
                finished = record()
                finished.id = lease.lease_id
                finished.prompt_tokens = validated.prompt_tokens
                finished.completion_tokens = 16
                settled.append(
                    quota_pb2.Settlement(
                        key_limits=principal.limits,
                        tenant_limits=principal.tenant_limits,
                        reserved_tokens=lease.reserved_tokens,
                        reserved_micro_usd=lease.reserved_micro_usd,
                        record=finished,
                    )
                )
            leases.append(
                await quota.Reserve(
                    quota_pb2.ReserveRequest(
                        principal=principal,
                        prompt_tokens=validated.prompt_tokens,
                        max_tokens=16,
                        record=record(),
                        settlements=settled,
                    )
                )
            )

        return {
            "auth": await _time(
                lambda: auth.Authenticate(
                    auth_pb2.AuthenticateRequest(authorization=f"Bearer {key}")
                ),
                calls,
            ),
            "validation": await _time(
                lambda: validation.ValidateChatCompletion(
                    validation_pb2.ValidateChatCompletionRequest(body=body)
                ),
                calls,
            ),
            "quota_reserve_and_settle": await _time(reserve_settling_the_last, calls),
            "router_and_engine": await _time(lambda: router.CreateChatCompletion(routed), calls),
        }
    finally:
        for channel in channels:
            await channel.close()


def probe_hops(config_path: Path, key: str, body: bytes, calls: int = CALLS) -> dict[str, float]:
    """p50 µs of each hop, each called alone from a fresh client."""
    return asyncio.run(_probe(config_path, key, body, calls))


def validation_share(
    hops: dict[str, float], overhead_us: float | None, cpu_by_process: dict[str, float]
) -> dict[str, Any]:
    """How much of the gateway's overhead the validation hop accounts for, in time and CPU."""
    # The upstream (reference engine, or the mock) is not the gateway.
    gateway_cpu = sum(v for k, v in cpu_by_process.items() if k not in ("engine", "mock"))
    share: dict[str, Any] = {"validation_p50_us": round(hops["validation"], 1)}
    if overhead_us:
        share["of_c1_overhead_pct"] = round(100 * hops["validation"] / overhead_us, 1)
    if gateway_cpu and "validation" in cpu_by_process:
        share["of_gateway_cpu_pct"] = round(100 * cpu_by_process["validation"] / gateway_cpu, 1)
    return share
