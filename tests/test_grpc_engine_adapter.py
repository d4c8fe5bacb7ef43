"""The router's gRPC engine adapter against the reference engine on a real server.

An engine that ends its connections at a max age (every meshgate service does, so
that clients find new replicas) refuses the calls that cross its GOAWAY. gRPC's
transparent retry is off with its retry policy, so the adapter must send those once
more itself: reported as the replica's failure, each one would eject the replica.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from meshgate import errors, grpcio
from meshgate.v1 import engine_pb2_grpc, inference_pb2
from services.engines.reference import generator
from services.engines.reference.server import ReferenceEngine
from services.router.adapters.base import EngineUnavailable
from services.router.adapters.grpc_engine import GrpcEngine

# A connection lives this long: many GOAWAYs within a short test.
MAX_AGE_MS = 40
CONCURRENCY = 48
# The race must have been met this often by plain calls beside the adapter's.
RACES_WANTED = 3
GIVE_UP_S = 30.0


def _chat() -> inference_pb2.ChatCompletionRequest:
    return inference_pb2.ChatCompletionRequest(
        model="ref",
        messages=[inference_pb2.ChatMessage(role="user", text="hi")],
        max_tokens=2,
    )


async def _scenario() -> tuple[collections.Counter[str], collections.Counter[str]]:
    generator.warm_up()
    server = grpc.aio.server(
        options=[
            ("grpc.max_connection_age_ms", MAX_AGE_MS),
            ("grpc.max_connection_age_grace_ms", grpcio.UNLIMITED_MS),
        ]
    )
    engine_pb2_grpc.add_EngineServiceServicer_to_server(ReferenceEngine(), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    adapter = GrpcEngine(f"127.0.0.1:{port}")
    # The same race, met by calls that are not sent again: proof that it happened.
    plain = grpcio.channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(plain)
    ours: collections.Counter[str] = collections.Counter()
    raw: collections.Counter[str] = collections.Counter()
    give_up = time.monotonic() + GIVE_UP_S

    def done() -> bool:
        return raw["refused"] >= RACES_WANTED or time.monotonic() > give_up

    async def through_adapter(n: int) -> None:
        while not done():
            try:
                if n % 2:
                    async for _ in adapter.stream_chat(_chat(), timeout=10):
                        pass
                else:
                    await adapter.chat(_chat(), timeout=10)
                ours["ok"] += 1
            except EngineUnavailable as exc:
                ours[f"unavailable: {exc}"] += 1

    async def plain_calls() -> None:
        while not done():
            try:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                raw["ok"] += 1
            except grpc.aio.AioRpcError as exc:
                raw["refused" if errors.transient(exc) else exc.code().name] += 1

    try:
        await asyncio.gather(
            *(through_adapter(n) for n in range(CONCURRENCY)),
            *(plain_calls() for _ in range(CONCURRENCY)),
        )
    finally:
        await adapter.close()
        await plain.close()
        await server.stop(None)
    return ours, raw


def test_calls_refused_at_the_engines_max_age_are_sent_again_not_failed() -> None:
    ours, raw = asyncio.run(_scenario())
    assert raw["refused"] >= RACES_WANTED, f"the GOAWAY race never happened: {dict(raw)}"
    assert ours["ok"] > 0
    assert set(ours) == {"ok"}, dict(ours)


def test_a_replica_that_is_gone_is_still_unavailable() -> None:
    async def scenario() -> EngineUnavailable | None:
        with socket.socket() as sock:  # a port nobody serves once it is closed
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        adapter = GrpcEngine(f"127.0.0.1:{port}")
        started = time.monotonic()
        try:
            async for _ in adapter.stream_chat(_chat(), timeout=5):
                pass
        except EngineUnavailable as exc:
            assert time.monotonic() - started < 4, "both attempts fail fast, not at the deadline"
            return exc
        finally:
            await adapter.close()
        return None

    exc = asyncio.run(scenario())
    assert exc is not None and exc.reason == "unreachable"
