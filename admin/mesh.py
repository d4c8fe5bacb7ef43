"""The admin listener's gRPC clients: auth (keys, tenants, roles), ledger (usage, audit), router.

One channel per service for the life of the process, like the edge's. A
service's own error (an ApiError in the status details) is passed on as it
is; the ledger's plain INVALID_ARGUMENT becomes a 400, anything else a 503.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge.mesh import RETRIES, Message, Method
from meshgate import grpcio
from meshgate.config import Config
from meshgate.errors import DETAILS_KEY, from_rpc_error, invalid_request, transient
from meshgate.v1 import (
    admin_pb2_grpc,
    audit_pb2_grpc,
    auth_pb2_grpc,
    ledger_pb2_grpc,
    router_pb2_grpc,
)


class AdminMesh:
    def __init__(self, config: Config) -> None:
        services = config.services
        self._channels = {
            name: grpcio.channel(services.get(name).dial_target(), config.tls)
            for name in ("auth", "ledger", "router")
        }
        self.auth = auth_pb2_grpc.AuthServiceStub(self._channels["auth"])
        self.keys = admin_pb2_grpc.AdminServiceStub(self._channels["auth"])
        self.usage = ledger_pb2_grpc.UsageServiceStub(self._channels["ledger"])
        self.audit = audit_pb2_grpc.AuditServiceStub(self._channels["ledger"])
        self.router = router_pb2_grpc.RouterServiceStub(self._channels["router"])
        self.request_timeout = config.admin.request_timeout_s
        self.max_body_bytes = config.admin.max_body_bytes

    async def ready(self) -> dict[str, bool]:
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
        for channel in self._channels.values():
            await channel.close()


async def call(
    method: Method,
    message: Message,
    service: str,
    request_id: str,
    deadline: float,
    *,
    idempotent: bool = False,
) -> Any:
    """One unary call within the admin request's deadline; failures are ApiError values.

    An idempotent call (a read, Authenticate) whose replica died mid-call is tried
    again on another (RETRIES, as the edge does); a change never is, since the dead
    replica may have made it already.
    """
    for attempt in range(RETRIES + 1 if idempotent else 1):
        try:
            return await method(
                message,
                timeout=max(deadline - time.monotonic(), 0.001),
                metadata=(("x-request-id", request_id),),
            )
        except grpc.aio.AioRpcError as exc:
            if idempotent and attempt < RETRIES and transient(exc):
                continue
            ours = any(key == DETAILS_KEY for key, _ in exc.trailing_metadata() or ())
            if not ours and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise invalid_request(exc.details() or "invalid argument") from None
            raise from_rpc_error(exc, service) from None
    raise AssertionError("unreachable")
