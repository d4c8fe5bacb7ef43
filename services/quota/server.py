"""The quota service: admits requests against the key's limits, then settles them.

Reserve charges the worst case (prompt tokens plus the completion allowance)
and takes a concurrency lease; Settle replaces that with the true usage and
releases the lease. Both are single atomic script calls (buckets.lua), so the
limits hold exactly however many quota replicas run.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Iterable, Sequence

import grpc
import prometheus_client
from redis.exceptions import RedisError

from meshgate import grpcio, redis_client
from meshgate.config import Config
from meshgate.errors import DOC_URL_QUOTA, ApiError
from meshgate.grpcio import Context
from meshgate.v1 import common_pb2, quota_pb2, quota_pb2_grpc
from services.quota.buckets import Buckets, Decision, Settlement, Verdict

log = logging.getLogger("meshgate.quota")

_NO_STATE = common_pb2.RateLimitState()

FAIL_OPEN_ADMISSIONS = prometheus_client.Counter(
    "meshgate_quota_fail_open_admissions",
    "Requests admitted without a quota check because Redis was unreachable (fail_open keys).",
)
REDIS_ERRORS = prometheus_client.Counter(
    "meshgate_quota_redis_errors",
    "Redis calls that failed or timed out, by operation.",
    ["operation"],
)
DECISIONS = prometheus_client.Counter(
    "meshgate_quota_decisions",
    "Reserve outcomes: admitted, or the limit that refused.",
    ["outcome"],
)


def _retry_after(wait_ms: int) -> int:
    """Whole seconds for Retry-After, rounded up so that a retry then always fits."""
    return max(1, math.ceil(wait_ms / 1000))


def denial(decision: Decision, limits: common_pb2.Limits, cost: int) -> ApiError:
    """OpenAI's 429 wording; Retry-After derives from the bucket's deficit and refill rate."""
    verdict, state = decision.verdict, decision.state
    if verdict is Verdict.BUDGET_SPENT:
        return ApiError(
            429,
            "insufficient_quota",
            f"You exceeded your current quota: this key's budget of {limits.budget_tokens} tokens is spent "
            f"(the request needs up to {cost}).",
            code="insufficient_quota",
            doc_url=DOC_URL_QUOTA,
            should_retry=False,
            rate_limit=state,
        )
    if verdict is Verdict.TOO_LARGE:
        return ApiError(
            429,
            "tokens",
            f"Request too large on tokens per min (TPM): Limit {limits.tokens_per_minute}, Requested {cost}. "
            "The input or output tokens must be reduced in order to run successfully.",
            code="rate_limit_exceeded",
            doc_url=DOC_URL_QUOTA,
            should_retry=False,
            rate_limit=state,
        )
    if verdict is Verdict.CONCURRENCY_FULL:
        # A slot frees whenever any request ends, so the honest hint is "soon".
        return ApiError(
            429,
            "requests",
            f"Too many concurrent requests: Limit {limits.max_concurrency}. Please retry when one finishes.",
            code="rate_limit_exceeded",
            doc_url=DOC_URL_QUOTA,
            rate_limit=state,
            retry_after=1,
            retry_after_ms=1000,
        )
    seconds = decision.wait_ms / 1000
    if verdict is Verdict.REQUESTS_EMPTY:
        what, kind = (
            f"requests per min (RPM): Limit {limits.requests_per_minute}, Requested 1",
            "requests",
        )
    else:
        what, kind = (
            f"tokens per min (TPM): Limit {limits.tokens_per_minute}, Requested {cost}",
            "tokens",
        )
    return ApiError(
        429,
        kind,
        f"Rate limit reached on {what}. Please try again in {seconds:.3g}s.",
        code="rate_limit_exceeded",
        doc_url=DOC_URL_QUOTA,
        rate_limit=state,
        retry_after=_retry_after(decision.wait_ms),
        retry_after_ms=max(1, decision.wait_ms),
    )


REDIS_DOWN = ApiError(
    503,
    "server_error",
    "Rate limiting is temporarily unavailable, so the request was not admitted. Please retry.",
    retry_after=1,
    should_retry=True,
)


def _settles(limits: common_pb2.Limits) -> bool:
    return bool(limits.tokens_per_minute or limits.max_concurrency or limits.budget_tokens)


def _limited(limits: common_pb2.Limits) -> bool:
    return bool(
        limits.requests_per_minute
        or limits.tokens_per_minute
        or limits.max_concurrency
        or limits.budget_tokens
    )


def _settle_refused(count: int) -> None:
    """Settlements Redis refused one by one (a key it cannot update): counted, logged, dropped.
    Their leases lapse by TTL; their tokens stay charged at the reservation."""
    REDIS_ERRORS.labels("settle").inc(count)
    log.error("settlements refused by redis", extra={"settlements": count})


def _due(settlements: Iterable[quota_pb2.SettleRequest]) -> list[Settlement]:
    """The settlements that charged something (not fail_open admissions or unlimited keys)."""
    return [
        (s.principal.key_id, s.principal.limits, s.reserved_tokens, s.lease_id,
         s.usage.prompt_tokens + s.usage.completion_tokens)
        for s in settlements
        if s.lease_id and _settles(s.principal.limits)
    ]  # fmt: skip


class QuotaService(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(self, buckets: Buckets, default_max_tokens: int, lease_ttl_ms: int) -> None:
        self._buckets = buckets
        self._default_max_tokens = default_max_tokens
        self._lease_ttl_ms = lease_ttl_ms

    async def Reserve(
        self, request: quota_pb2.ReserveRequest, context: Context
    ) -> quota_pb2.ReserveResponse:
        principal = request.principal
        limits = principal.limits
        allowance = (
            request.max_tokens if request.HasField("max_tokens") else self._default_max_tokens
        )
        cost = request.prompt_tokens + allowance
        # Only token, budget and concurrency limits need a settlement; others get no lease.
        lease_id = secrets.token_hex(8) if _settles(limits) else ""
        settlements = _due(request.settlements)
        if not _limited(limits):
            await self._settle(settlements)
            return quota_pb2.ReserveResponse(
                lease_id="", reserved_tokens=cost, rate_limit=_NO_STATE
            )
        try:
            decision, refused = await self._buckets.reserve(
                principal.key_id, limits, cost, lease_id, self._lease_ttl_ms, settlements
            )
        except (RedisError, OSError) as exc:
            REDIS_ERRORS.labels("reserve").inc()
            if settlements:
                REDIS_ERRORS.labels("settle").inc(len(settlements))
            extra = {
                "key_id": principal.key_id,
                "request_id": request.request_id,
                "error": type(exc).__name__,
            }
            if principal.redis_failure_policy == "fail_open":
                FAIL_OPEN_ADMISSIONS.inc()
                log.warning("redis unavailable, admitting (fail_open)", extra=extra)
                return quota_pb2.ReserveResponse(
                    lease_id="", reserved_tokens=0, rate_limit=_NO_STATE
                )
            log.error("redis unavailable, refusing (fail_closed)", extra=extra)
            await REDIS_DOWN.abort(context)
        if refused:
            _settle_refused(refused)
        DECISIONS.labels(decision.verdict.name.lower()).inc()
        if not decision.admitted:
            await denial(decision, limits, cost).abort(context)
        return quota_pb2.ReserveResponse(
            lease_id=lease_id, reserved_tokens=cost, rate_limit=decision.state
        )

    async def Settle(
        self, request: quota_pb2.SettleRequest, context: Context
    ) -> quota_pb2.SettleResponse:
        await self._settle(_due([request]))
        return quota_pb2.SettleResponse()

    async def SettleMany(
        self, request: quota_pb2.SettleManyRequest, context: Context
    ) -> quota_pb2.SettleManyResponse:
        await self._settle(_due(request.settlements))
        return quota_pb2.SettleManyResponse()

    async def _settle(self, settlements: list[Settlement]) -> None:
        """One Redis round trip for all of them (a pipeline of script calls)."""
        if not settlements:
            return
        try:
            refused = await self._buckets.settle_many(settlements)
        except (RedisError, OSError) as exc:
            REDIS_ERRORS.labels("settle").inc(len(settlements))
            # Leases lapse by their TTL; tokens stay charged at the reservation (never undercharged).
            log.error(
                "settle failed",
                extra={"settlements": len(settlements), "error": type(exc).__name__},
            )
            return
        if refused:
            _settle_refused(refused)

    async def GetRateLimit(
        self, request: quota_pb2.GetRateLimitRequest, context: Context
    ) -> quota_pb2.GetRateLimitResponse:
        principal = request.principal
        if not (principal.limits.requests_per_minute or principal.limits.tokens_per_minute):
            return quota_pb2.GetRateLimitResponse(rate_limit=_NO_STATE)
        try:
            decision = await self._buckets.peek(principal.key_id, principal.limits)
        except (RedisError, OSError):
            REDIS_ERRORS.labels("peek").inc()
            return quota_pb2.GetRateLimitResponse(rate_limit=_NO_STATE)
        return quota_pb2.GetRateLimitResponse(rate_limit=decision.state)


async def run(config: Config) -> None:
    if not config.redis.url:
        raise SystemExit("meshgate quota: redis.url is empty (set REDIS_URL or run `meshgate up`)")
    redis = redis_client.connect(config.redis)
    # A lease outlives the longest request, so only a crashed request's lease lapses.
    lease_ttl_ms = int((config.edge.request_timeout_s + 5) * 1000)
    service = QuotaService(Buckets(redis), config.quota.default_max_tokens, lease_ttl_ms)

    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        quota_pb2_grpc.add_QuotaServiceServicer_to_server(service, server)
        return [quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name]

    cfg = config.services.quota
    try:
        await grpcio.serve("quota", cfg, setup, tls=config.tls)
    finally:
        await redis.aclose()
