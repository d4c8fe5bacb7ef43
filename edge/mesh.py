"""The edge's gRPC clients: one channel per service for the life of the process.

Settlements on their way to quota are edge/settlements.py's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message as ProtoMessage
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge.auth_cache import AuthCache
from edge.batching import ALONE_BYTES, Coalescer
from edge.settlements import Settlements
from meshgate import errors, grpcio
from meshgate.config import Config
from meshgate.deadline import left
from meshgate.errors import ApiError, from_rpc_error, transient
from meshgate.v1 import (
    auth_pb2_grpc,
    quota_pb2,
    quota_pb2_grpc,
    router_pb2_grpc,
    validation_pb2,
    validation_pb2_grpc,
)

# Deadline for the quick hops (auth, validation, quota), within the request's own.
HOP_TIMEOUT_S = 5.0
# Extra attempts for a call whose replica died (UNAVAILABLE without an error of ours).
RETRIES = 2
# How long a stopping edge keeps trying to hand its settlements to quota.
CLOSE_DRAIN_S = 10.0


# A generated (untyped) stub's method, the call it returns, and a request message.
Method = Callable[..., Any]
Call = Any

# ValidateManyItem's body field for each single method's request type (by full name), and
# the single method for each field (for a validation replica without ValidateMany): read
# from the protos, so that a new kind of body needs no edit here.
VALIDATE_KIND = {
    field.message_type.full_name: field.name
    for field in validation_pb2.ValidateManyItem.DESCRIPTOR.oneofs_by_name["body"].fields
    if field.message_type is not None
}
VALIDATE_METHOD = {
    VALIDATE_KIND[method.input_type.full_name]: method.name
    for method in validation_pb2.DESCRIPTOR.services_by_name["ValidationService"].methods
    if method.input_type.full_name in VALIDATE_KIND
}
Message = ProtoMessage


def metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    """What every hop carries: the request id, for the services' logs and records."""
    return (("x-request-id", request_id),)


def start(
    method: Method, message: Message, request_id: str, deadline: float, cap: float = math.inf
) -> Call:
    """Start one call of a generated stub's method, with what is left of the deadline."""
    return method(message, timeout=left(deadline, cap), metadata=metadata(request_id))


async def rpc_call(
    method: Method,
    message: Message,
    service: str,
    request_id: str,
    deadline: float,
    *,
    cap: float = HOP_TIMEOUT_S,
    started: Call | None = None,
) -> tuple[Any, Call]:
    """Await a unary call (or one already `started`), retried on another replica if its
    replica died mid-call; the answer and the call (for its trailing metadata).

    A service's own errors are final. Up to RETRIES more attempts, since the first
    retry may still meet the dying replica's connection. Retrying here rather than
    with gRPC's retry policy keeps the policy's per-call cost off every request.
    """
    call = started
    for attempt in range(RETRIES + 1):
        if call is None or attempt:
            call = start(method, message, request_id, deadline, cap)
        try:
            return await call, call
        except grpc.aio.AioRpcError as exc:
            if attempt == RETRIES or not transient(exc):
                raise from_rpc_error(exc, service) from None
    raise AssertionError("unreachable")


async def rpc(
    method: Method,
    message: Message,
    service: str,
    request_id: str,
    deadline: float,
    *,
    cap: float = HOP_TIMEOUT_S,
    started: Call | None = None,
) -> Any:
    """`rpc_call`, for when only the answer matters."""
    answer, _ = await rpc_call(
        method, message, service, request_id, deadline, cap=cap, started=started
    )
    return answer


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
        # Settlements go on a channel of their own. Sharing the Reserve channel, a lone
        # client's calls alternate Reserve, SettleMany under round_robin, and with two
        # quota replicas every Reserve would land on the same one.
        self._settle_channel = grpcio.channel(services.get("quota").dial_target(), config.tls)
        self.settlements = Settlements(quota_pb2_grpc.QuotaServiceStub(self._settle_channel))
        self._watch: asyncio.Task[None] | None = None
        self._validations: Coalescer[validation_pb2.ValidateManyItem, Any] = Coalescer(
            "validation", self._validate_many
        )
        self._reservations: Coalescer[quota_pb2.ReserveRequest, quota_pb2.ReserveResponse] = (
            Coalescer("quota", self._reserve_many)
        )

    # ---------------------------------------- validation and reservation ----

    def start_validation(
        self, method: Method, body: Message, request_id: str, deadline: float
    ) -> Call | asyncio.Future[Any]:
        """Validate `body` alone now if no validation is in flight, else with the next
        batch (edge/batching.py); either can be cancelled, and `validated` awaits it."""
        if body.ByteSize() > ALONE_BYTES:
            return start(method, body, request_id, deadline, HOP_TIMEOUT_S)
        if not self._validations.begin():
            item = validation_pb2.ValidateManyItem(request_id=request_id)
            getattr(item, VALIDATE_KIND[body.DESCRIPTOR.full_name]).CopyFrom(body)
            return self._validations.queue(item, request_id, deadline)
        return _started(self._validations, method, body, request_id, deadline)

    async def validated(
        self,
        method: Method,
        body: Message,
        request_id: str,
        deadline: float,
        pending: Call | asyncio.Future[Any],
    ) -> Any:
        """The answer of `start_validation`'s call, or the ApiError it ended with."""
        if isinstance(pending, asyncio.Future):
            return await pending
        return await rpc(method, body, "validation", request_id, deadline, started=pending)

    async def reserve(
        self, request: quota_pb2.ReserveRequest, request_id: str, deadline: float
    ) -> quota_pb2.ReserveResponse:
        """Reserve alone now if no reservation is in flight, else with the next batch."""
        if not self._reservations.begin():
            return await self._reservations.queue(request, request_id, deadline)
        call = _started(self._reservations, self.quota.Reserve, request, request_id, deadline)
        answer: quota_pb2.ReserveResponse = await rpc(
            self.quota.Reserve, request, "quota", request_id, deadline, started=call
        )
        return answer

    async def _validate_many(
        self, items: list[validation_pb2.ValidateManyItem], request_id: str, deadline: float
    ) -> list[Any]:
        request = validation_pb2.ValidateManyRequest(items=items)
        answer = await _batch(
            self.validation.ValidateMany, request, "validation", request_id, deadline
        )
        if answer is None:  # an older validation replica: each body alone
            return await asyncio.gather(*(self._validate_alone(i, deadline) for i in items))
        return [_outcome(result) for result in answer.results]

    async def _validate_alone(self, item: validation_pb2.ValidateManyItem, deadline: float) -> Any:
        kind = item.WhichOneof("body")
        if kind is None:
            return errors.server_error()
        method = getattr(self.validation, VALIDATE_METHOD[kind])
        return await _alone(method, getattr(item, kind), "validation", item.request_id, deadline)

    async def _reserve_many(
        self, requests: list[quota_pb2.ReserveRequest], request_id: str, deadline: float
    ) -> list[quota_pb2.ReserveResponse | ApiError]:
        request = quota_pb2.ReserveManyRequest(requests=requests)
        answer = await _batch(self.quota.ReserveMany, request, "quota", request_id, deadline)
        if answer is None:  # an older quota replica: each reservation alone
            return await asyncio.gather(
                *(_alone(self.quota.Reserve, r, "quota", r.request_id, deadline) for r in requests)
            )
        return [_outcome(outcome) for outcome in answer.outcomes]

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
        await self.settlements.drain(CLOSE_DRAIN_S)
        for channel in [*self._channels.values(), self._settle_channel]:
            await channel.close()


def _started(
    coalescer: Coalescer[Any, Any], method: Method, body: Message, request_id: str, deadline: float
) -> Call:
    """A lone call that ends the coalescer's turn in flight when it is over."""
    try:
        call = start(method, body, request_id, deadline, HOP_TIMEOUT_S)
    except BaseException:
        coalescer.end()
        raise
    call.add_done_callback(lambda _: coalescer.end())
    return call


async def _batch(
    method: Method, request: Message, service: str, request_id: str, deadline: float
) -> Any | None:
    """A batch call's answer; None from a replica too old to have the batch method."""
    call = start(method, request, request_id, deadline, HOP_TIMEOUT_S)
    try:
        return await rpc(method, request, service, request_id, deadline, started=call)
    except ApiError:
        if call.done() and await call.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise


async def _alone(
    method: Method, request: Message, service: str, request_id: str, deadline: float
) -> Any:
    """One single call's answer, or the ApiError it ended with."""
    try:
        return await rpc(method, request, service, request_id, deadline)
    except ApiError as exc:
        return exc


def _outcome(result: ProtoMessage) -> Any:
    """A batch item's answer (its `outcome` oneof), or its error as an ApiError."""
    field = result.WhichOneof("outcome")
    if field is None:
        return errors.server_error()
    if field == "error":
        return ApiError.from_proto(getattr(result, field))
    return getattr(result, field)


__all__ = ["HOP_TIMEOUT_S", "ApiError", "Mesh", "rpc", "rpc_call", "start"]
