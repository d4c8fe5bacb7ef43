"""The edge's gRPC clients: one channel per service for the life of the process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge.auth_cache import AuthCache
from meshgate import grpcio
from meshgate.config import Config
from meshgate.errors import DETAILS_KEY, ApiError, from_rpc_error
from meshgate.v1 import (
    auth_pb2_grpc,
    quota_pb2,
    quota_pb2_grpc,
    router_pb2_grpc,
    validation_pb2_grpc,
)

log = logging.getLogger("meshgate.edge")

# Deadline for the quick hops (auth, validation, quota), within the request's own.
HOP_TIMEOUT_S = 5.0
# Extra attempts for a call whose replica died (UNAVAILABLE without an error of ours).
RETRIES = 2
# How long finished requests wait to be settled together.
SETTLE_WINDOW_S = 0.002
# Settlements one Reserve carries at most.
MAX_CARRIED = 64
# Settlements one SettleMany call carries at most.
MAX_SETTLE_BATCH = 512
# Pause before sending settlements again that quota could not apply.
SETTLE_RETRY_S = 0.5
# Settlements kept while quota is unreachable; beyond it the oldest leases lapse.
MAX_BACKLOG = 200_000
# How long a stopping edge keeps trying to hand its settlements to quota.
CLOSE_DRAIN_S = 10.0


# A unary call as the generated (untyped) stubs return it.
Call = Any


def transient(exc: grpc.aio.AioRpcError) -> bool:
    """The replica went away mid-call (UNAVAILABLE, and no error of ours in the details)."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return not any(key == DETAILS_KEY for key, _ in exc.trailing_metadata() or ())


async def rpc_call(
    make: Callable[[], Call], service: str, started: Call | None = None
) -> tuple[Any, Call]:
    """Await a unary call, retried on another replica if its replica died mid-call.

    A service's own errors are final. Up to RETRIES more attempts, since the first
    retry may still meet the dying replica's connection. Retrying here rather than
    with gRPC's retry policy keeps the policy's per-call cost off every request.
    """
    call = started if started is not None else make()
    for attempt in range(RETRIES + 1):
        if attempt:
            call = make()
        try:
            return await call, call
        except grpc.aio.AioRpcError as exc:
            if attempt == RETRIES or not transient(exc):
                raise from_rpc_error(exc, service) from None
    raise AssertionError("unreachable")


async def rpc(make: Callable[[], Call], service: str, started: Call | None = None) -> Any:
    """`rpc_call`, for when only the answer matters."""
    return (await rpc_call(make, service, started))[0]


class Mesh:
    def __init__(self, config: Config) -> None:
        services = config.services
        self._channels = {
            name: grpcio.channel(services.get(name).dial_target(), config.tls)
            for name in ("auth", "quota", "validation", "router")
        }
        self.auth = auth_pb2_grpc.AuthServiceStub(self._channels["auth"])
        self.quota = quota_pb2_grpc.QuotaServiceStub(self._channels["quota"])
        self.validation = validation_pb2_grpc.ValidationServiceStub(self._channels["validation"])
        self.router = router_pb2_grpc.RouterServiceStub(self._channels["router"])
        self.request_timeout = config.edge.request_timeout_s
        self.access_log = config.logging.access_log
        self.auth_cache = AuthCache(config.auth.cache_ttl_ms / 1000)
        self.max_body_bytes = config.edge.max_body_bytes
        self._background: set[asyncio.Task[None]] = set()
        self._pending: list[quota_pb2.Settlement] = []
        self._closing = False
        self._in_flight = 0
        self._watch: asyncio.Task[None] | None = None

    def settle(self, settlement: quota_pb2.Settlement) -> None:
        """Settle off the response path, batched: the client never waits for it.

        Settlements ride on the next Reserve (`take_settlements`); those that
        find none within SETTLE_WINDOW_S go to quota in one SettleMany call. A
        busy edge so pays no call of its own for settling. A settlement quota
        could not apply is sent again until it is (settling is idempotent per
        lease): it carries the request's usage record.
        """
        self._queue(settlement)

    def _queue(self, settlement: quota_pb2.Settlement) -> None:
        self._pending.append(settlement)
        if len(self._pending) > MAX_BACKLOG:
            # Quota has been gone for long: the oldest leases lapse instead, and the
            # sweep records them at their reservation (never for free, never twice).
            dropped = len(self._pending) - MAX_BACKLOG
            del self._pending[:dropped]
            log.error("settlement backlog full, oldest left to lapse", extra={"dropped": dropped})
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_later(SETTLE_WINDOW_S, self._flush)

    def take_settlements(self) -> list[quota_pb2.Settlement]:
        """Waiting settlements for a Reserve to carry (quota applies them first).

        At most MAX_CARRIED, so that a backlog (after a quota outage) never makes
        one request's admission slow; the rest wait for the next Reserve or the
        window's SettleMany, whose timer is armed while anything waits.
        """
        batch = self._pending[:MAX_CARRIED]
        del self._pending[:MAX_CARRIED]
        return batch

    def return_settlements(self, batch: list[quota_pb2.Settlement]) -> None:
        """Settlements whose Reserve failed: they go again (settling is idempotent per lease)."""
        for settlement in batch:
            self._queue(settlement)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        for start in range(0, len(batch), MAX_SETTLE_BATCH):
            chunk = batch[start : start + MAX_SETTLE_BATCH]
            # Counted from here, not from when the task starts: never in neither place.
            self._in_flight += len(chunk)
            task = asyncio.create_task(self._settle_many(chunk))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    @property
    def unsettled(self) -> int:
        """Settlements not yet applied by quota: waiting here, or on their way."""
        return len(self._pending) + self._in_flight

    async def _settle_many(self, batch: list[quota_pb2.Settlement]) -> None:
        try:
            await self.quota.SettleMany(
                quota_pb2.SettleManyRequest(settlements=batch), timeout=HOP_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            # Quota (or its Redis) is unreachable: wait a moment, then send them again.
            log.warning("settlements not applied, retrying", extra={"error": exc.code().name})
            if not self._closing:
                await asyncio.sleep(SETTLE_RETRY_S)
            self.return_settlements(batch)
        finally:
            self._in_flight -= len(batch)

    async def ready(self) -> dict[str, bool]:
        """Each service's gRPC health, checked concurrently."""

        async def check(channel: grpc.aio.Channel) -> bool:
            try:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0
                )
            except grpc.aio.AioRpcError:
                return False
            return response.status == health_pb2.HealthCheckResponse.SERVING

        names = list(self._channels)
        results = await asyncio.gather(*(check(self._channels[n]) for n in names))
        return dict(zip(names, results, strict=True))

    def start(self) -> None:
        """Background work that lives as long as the edge: the auth key watch."""
        self._watch = asyncio.create_task(self.auth_cache.watch(self.auth))

    async def close(self) -> None:
        """Drain: settlements still waiting go to quota, retried until it answers or 10 s pass."""
        if self._watch is not None:
            self._watch.cancel()
        self._closing = True
        deadline = asyncio.get_running_loop().time() + CLOSE_DRAIN_S
        while self._pending or self._background:
            self._flush()
            if self._background:
                await asyncio.wait(self._background, timeout=1)
            if asyncio.get_running_loop().time() > deadline:
                log.error(
                    "settlements left unsent at shutdown", extra={"settlements": len(self._pending)}
                )
                break
            if self._pending:
                await asyncio.sleep(SETTLE_RETRY_S)
        for channel in self._channels.values():
            await channel.close()


__all__ = ["HOP_TIMEOUT_S", "ApiError", "Mesh", "rpc"]
