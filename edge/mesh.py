"""The edge's gRPC clients: one channel per service for the life of the process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshgate import grpcio
from meshgate.config import Config
from meshgate.errors import ApiError, from_rpc_error
from meshgate.v1 import (
    auth_pb2_grpc,
    common_pb2,
    quota_pb2,
    quota_pb2_grpc,
    router_pb2_grpc,
    validation_pb2_grpc,
)

T = TypeVar("T")

# Deadline for the quick hops (auth, validation, quota), within the request's own.
HOP_TIMEOUT_S = 5.0


async def rpc(call: Awaitable[T], service: str) -> T:
    """Await a unary call, turning a gRPC failure into the ApiError it carries."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, service) from None


class Mesh:
    def __init__(self, config: Config) -> None:
        services = config.services
        self._channels = {
            name: grpcio.channel(services.get(name).dial_target())
            for name in ("auth", "quota", "validation", "router")
        }
        self.auth = auth_pb2_grpc.AuthServiceStub(self._channels["auth"])
        self.quota = quota_pb2_grpc.QuotaServiceStub(self._channels["quota"])
        self.validation = validation_pb2_grpc.ValidationServiceStub(self._channels["validation"])
        self.router = router_pb2_grpc.RouterServiceStub(self._channels["router"])
        self.request_timeout = config.edge.request_timeout_s
        self.max_body_bytes = config.edge.max_body_bytes
        self._background: set[asyncio.Task[None]] = set()

    def settle(
        self,
        principal: common_pb2.Principal,
        reservation: quota_pb2.ReserveResponse,
        usage: common_pb2.Usage,
        request_id: str,
    ) -> None:
        """Settle off the response path: the client never waits for it."""
        task = asyncio.create_task(self._settle(principal, reservation, usage, request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle(
        self,
        principal: common_pb2.Principal,
        reservation: quota_pb2.ReserveResponse,
        usage: common_pb2.Usage,
        request_id: str,
    ) -> None:
        request = quota_pb2.SettleRequest(
            principal=principal,
            lease_id=reservation.lease_id,
            reserved_tokens=reservation.reserved_tokens,
            usage=usage,
        )
        try:
            await self.quota.Settle(
                request, timeout=HOP_TIMEOUT_S, metadata=(("x-request-id", request_id),)
            )
        except grpc.aio.AioRpcError:
            pass  # quota logs its own failures; the lease expires by TTL

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

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        for channel in self._channels.values():
            await channel.close()


__all__ = ["HOP_TIMEOUT_S", "ApiError", "Mesh", "rpc"]
