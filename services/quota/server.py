"""The quota service: admits requests against the key's buckets, then settles them."""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Sequence

import grpc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from meshgate import grpcio
from meshgate.config import Config
from meshgate.errors import DOC_URL_QUOTA, ApiError
from meshgate.v1 import common_pb2, quota_pb2, quota_pb2_grpc
from services.quota.buckets import Buckets, Decision

log = logging.getLogger("meshgate.quota")

_UNLIMITED = common_pb2.RateLimitState()


def rate_limited(decision: Decision, limits: common_pb2.Limits, cost: int) -> ApiError:
    """OpenAI's 429 wording, with Retry-After derived from the bucket's deficit."""
    if decision.denied_by == "requests":
        what = f"requests per min (RPM): Limit {limits.requests_per_minute}, Requested 1."
    else:
        what = f"tokens per min (TPM): Limit {limits.tokens_per_minute}, Requested {cost}."
    if decision.wait_ms < 0:
        return ApiError(
            429,
            "tokens",
            f"Request too large on {what} The input or output tokens must be reduced in order to run successfully.",
            code="rate_limit_exceeded",
            doc_url=DOC_URL_QUOTA,
            rate_limit=decision.state,
        )
    seconds = decision.wait_ms / 1000
    return ApiError(
        429,
        decision.denied_by,
        f"Rate limit reached on {what} Please try again in {seconds:.3g}s.",
        code="rate_limit_exceeded",
        doc_url=DOC_URL_QUOTA,
        retry_after=max(1, math.ceil(seconds)),
        rate_limit=decision.state,
    )


REDIS_DOWN = ApiError(
    503,
    "server_error",
    "Rate limiting is temporarily unavailable, so the request was not admitted. Please retry.",
    retry_after=1,
)


class QuotaService(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(self, buckets: Buckets, default_max_tokens: int) -> None:
        self._buckets = buckets
        self._default_max_tokens = default_max_tokens
        self.fail_open_admissions = 0

    async def Reserve(
        self,
        request: quota_pb2.ReserveRequest,
        context: grpc.aio.ServicerContext[quota_pb2.ReserveRequest, quota_pb2.ReserveResponse],
    ) -> quota_pb2.ReserveResponse:
        principal = request.principal
        limits = principal.limits
        allowance = (
            request.max_tokens if request.HasField("max_tokens") else self._default_max_tokens
        )
        cost = request.prompt_tokens + allowance
        lease_id = secrets.token_hex(8)
        if limits.requests_per_minute == 0 and limits.tokens_per_minute == 0:
            return quota_pb2.ReserveResponse(
                lease_id=lease_id, reserved_tokens=cost, rate_limit=_UNLIMITED
            )
        try:
            decision = await self._buckets.reserve(principal.key_id, limits, cost)
        except (RedisError, OSError) as exc:
            if principal.redis_failure_policy == "fail_open":
                self.fail_open_admissions += 1
                log.warning(
                    "redis unavailable, admitting (fail_open)",
                    extra={
                        "key_id": principal.key_id,
                        "request_id": request.request_id,
                        "error": type(exc).__name__,
                    },
                )
                return quota_pb2.ReserveResponse(
                    lease_id=lease_id, reserved_tokens=0, rate_limit=_UNLIMITED
                )
            log.error(
                "redis unavailable, refusing (fail_closed)",
                extra={
                    "key_id": principal.key_id,
                    "request_id": request.request_id,
                    "error": type(exc).__name__,
                },
            )
            await REDIS_DOWN.abort(context)
        if not decision.admitted:
            await rate_limited(decision, limits, cost).abort(context)
        return quota_pb2.ReserveResponse(
            lease_id=lease_id, reserved_tokens=cost, rate_limit=decision.state
        )

    async def Settle(
        self,
        request: quota_pb2.SettleRequest,
        context: grpc.aio.ServicerContext[quota_pb2.SettleRequest, quota_pb2.SettleResponse],
    ) -> quota_pb2.SettleResponse:
        used = request.usage.prompt_tokens + request.usage.completion_tokens
        try:
            await self._buckets.settle(
                request.principal.key_id, request.principal.limits, request.reserved_tokens, used
            )
        except (RedisError, OSError) as exc:
            log.error(
                "settle failed",
                extra={"key_id": request.principal.key_id, "error": type(exc).__name__},
            )
        return quota_pb2.SettleResponse()


async def run(config: Config) -> None:
    if not config.redis.url:
        raise SystemExit("meshgate quota: redis.url is empty (set REDIS_URL or run `meshgate up`)")
    timeout = config.redis.timeout_ms / 1000
    redis = Redis.from_url(config.redis.url, socket_timeout=timeout, socket_connect_timeout=timeout)

    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        service = QuotaService(Buckets(redis), config.quota.default_max_tokens)
        quota_pb2_grpc.add_QuotaServiceServicer_to_server(service, server)
        return [quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name]

    cfg = config.services.quota
    try:
        await grpcio.serve("quota", cfg.host, cfg.port, setup)
    finally:
        await redis.aclose()
