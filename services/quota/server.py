"""The quota service: admits requests against the key's limits, then settles them.

Reserve charges the worst case (prompt tokens plus the completion allowance)
and takes a concurrency lease; Settle replaces that with the true usage and
releases the lease. Both are single atomic script calls (buckets.lua), so the
limits hold exactly however many quota replicas run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal

import grpc
import prometheus_client
from redis.exceptions import RedisError

from meshgate import grpcio, logs, redis_client
from meshgate.config import Config
from meshgate.errors import DOC_URL_QUOTA, ApiError
from meshgate.grpcio import Context
from meshgate.pricing import PriceBook, micro_usd
from meshgate.v1 import common_pb2, quota_pb2, quota_pb2_grpc, usage_pb2
from services.quota.buckets import (
    Buckets,
    Call,
    Decision,
    Layout,
    Owner,
    Subject,
    Verdict,
    needs_settling,
    period_of,
)

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
LEASES_LAPSED = prometheus_client.Counter(
    "meshgate_quota_leases_lapsed",
    "Admissions whose settlement never came; recorded at their reservation.",
)
# How often each quota replica records lapsed leases.
SWEEP_INTERVAL_S = 5.0
# How often stranded settlements are sent again, and how many are kept at most.
RESETTLE_INTERVAL_S = 0.5
MAX_STRANDED = 100_000
DECISIONS = prometheus_client.Counter(
    "meshgate_quota_decisions",
    "Reserve outcomes: admitted, or the limit that refused.",
    ["outcome"],
)


def _retry_after(wait_ms: int) -> int:
    """Whole seconds for Retry-After, rounded up so that a retry then always fits."""
    return max(1, math.ceil(wait_ms / 1000))


def _dollars(micro: int) -> str:
    """Cents once they matter, micro-dollars below; exact either way."""
    amount = Decimal(micro) / 10**6
    return f"${amount:,.2f}" if micro >= 10_000 else f"${amount:.6f}"


def _whose(decision: Decision, principal: common_pb2.Principal) -> str:
    return f"tenant {principal.tenant!r}" if decision.subject is Subject.TENANT else "this key"


def denial(
    decision: Decision, principal: common_pb2.Principal, cost: int, micro_usd: int
) -> ApiError:
    """OpenAI's 429 wording; Retry-After derives from the bucket's deficit and refill rate."""
    verdict, state = decision.verdict, decision.state
    limits = principal.tenant_limits if decision.subject is Subject.TENANT else principal.limits
    whose = _whose(decision, principal)
    if verdict is Verdict.USD_BUDGET_SPENT:
        period = {"day": " for today (UTC)", "month": " for this month (UTC)"}.get(
            period_of(limits), ""
        )
        return ApiError(
            429,
            "insufficient_quota",
            f"You exceeded your current quota: the budget of {_dollars(limits.budget_micro_usd)}"
            f"{period} for {whose} is spent (the request could cost up to {_dollars(micro_usd)}).",
            code="insufficient_quota",
            doc_url=DOC_URL_QUOTA,
            should_retry=False,
            rate_limit=state,
        )
    if verdict is Verdict.BUDGET_SPENT:
        return ApiError(
            429,
            "insufficient_quota",
            f"You exceeded your current quota: the budget of {limits.budget_tokens} tokens for "
            f"{whose} is spent (the request needs up to {cost}).",
            code="insufficient_quota",
            doc_url=DOC_URL_QUOTA,
            should_retry=False,
            rate_limit=state,
        )
    scope = "" if decision.subject is not Subject.TENANT else f" for tenant {principal.tenant!r}"
    if verdict is Verdict.TOO_LARGE:
        return ApiError(
            429,
            "tokens",
            f"Request too large on tokens per min (TPM){scope}: Limit {limits.tokens_per_minute}, "
            f"Requested {cost}. The input or output tokens must be reduced in order to run successfully.",
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
            f"Too many concurrent requests{scope}: Limit {limits.max_concurrency}. "
            "Please retry when one finishes.",
            code="rate_limit_exceeded",
            doc_url=DOC_URL_QUOTA,
            rate_limit=state,
            retry_after=1,
            retry_after_ms=1000,
        )
    seconds = decision.wait_ms / 1000
    if verdict is Verdict.REQUESTS_EMPTY:
        what, kind = (
            f"requests per min (RPM){scope}: Limit {limits.requests_per_minute}, Requested 1",
            "requests",
        )
    else:
        what, kind = (
            f"tokens per min (TPM){scope}: Limit {limits.tokens_per_minute}, Requested {cost}",
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


SETTLE_FAILED = ApiError(
    503,
    "server_error",
    "Settlements cannot be applied right now (Redis is unreachable); send them again.",
    retry_after=1,
)


def _settle_refused(count: int) -> None:
    """Settlements Redis refused one by one (a key it cannot update): counted, logged, dropped.
    Their leases lapse by TTL and the sweep records them at the reservation."""
    REDIS_ERRORS.labels("settle").inc(count)
    log.error("settlements refused by redis", extra={"settlements": count})


class QuotaService(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(
        self,
        buckets: Buckets,
        prices: PriceBook,
        *,
        default_max_tokens: int,
        lease_ttl_ms: int,
        recording: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._buckets = buckets
        self._prices = prices
        self._default_max_tokens = default_max_tokens
        self._lease_ttl_ms = lease_ttl_ms
        # Whether usage records are buffered for the ledger (`ledger.enabled`).
        self._recording = recording
        self._clock = clock
        # Settlements whose cluster master was unreachable when a Reserve carried them.
        self._stranded: list[Call] = []

    def strand(self, calls: Sequence[Call]) -> None:
        """Keep settlements to send again (resettle_forever); the oldest go past the bound,
        and their leases lapse to the sweep, which records them at the reservation."""
        self._stranded.extend(calls)
        excess = len(self._stranded) - MAX_STRANDED
        if excess > 0:
            del self._stranded[:excess]
            REDIS_ERRORS.labels("settle").inc(excess)
            log.error("stranded settlements dropped", extra={"settlements": excess})

    async def resettle(self) -> None:
        """Send the stranded settlements again; those Redis still cannot take stay."""
        batch, self._stranded = self._stranded, []
        if batch and not await self._settle(batch):
            self.strand(batch)

    def _settle_call(self, settlement: quota_pb2.Settlement) -> Call | None:
        """Price the finished record, then the script call that settles and buffers it."""
        record = settlement.record
        if not record.id:
            return None
        owner = Owner(record.key_id, record.tenant, settlement.key_limits, settlement.tenant_limits)
        at_s = record.started_unix_us / 1e6
        price = self._prices.get(record.model)
        pico = price.cost(record.prompt_tokens, record.cached_tokens, record.completion_tokens)
        body = b""
        if self._recording:
            record.cost_pico_usd = pico
            record.reserved_tokens = settlement.reserved_tokens
            record.reserved_micro_usd = settlement.reserved_micro_usd
            body = record.SerializeToString()
        if settlement.unreserved:
            return self._buckets.record_call(owner, at_s, body) if body else None
        return self._buckets.settle_call(
            owner,
            at_s,
            record.id,
            (settlement.reserved_tokens, settlement.reserved_micro_usd),
            (record.prompt_tokens + record.completion_tokens, micro_usd(pico)),
            body,
        )

    def _settle_calls(self, settlements: Iterable[quota_pb2.Settlement]) -> list[Call]:
        return [c for c in map(self._settle_call, settlements) if c is not None]

    def _lapse_record(
        self, request: quota_pb2.ReserveRequest, lease_id: str, cost: int, pico: int, micro: int
    ) -> bytes:
        """The record the sweep writes if no settlement ever comes: the reservation, charged."""
        if not self._recording:
            return b""
        # Serialized messages concatenate as a merge: the edge's fields, then these.
        return (
            request.record.SerializeToString()
            + usage_pb2.UsageRecord(
                id=lease_id,
                outcome=usage_pb2.OUTCOME_EXPIRED,
                error_code="lease_expired",
                prompt_tokens=request.prompt_tokens,
                completion_tokens=cost - request.prompt_tokens,
                cost_pico_usd=pico,
                reserved_tokens=cost,
                reserved_micro_usd=micro,
            ).SerializeToString()
        )

    async def Reserve(
        self, request: quota_pb2.ReserveRequest, context: Context
    ) -> quota_pb2.ReserveResponse:
        try:
            return await self.reserve(request)
        except ApiError as exc:
            await exc.abort(context)

    async def ReserveMany(
        self, request: quota_pb2.ReserveManyRequest, context: Context
    ) -> quota_pb2.ReserveManyResponse:
        outcomes = await asyncio.gather(*(self._outcome(item) for item in request.requests))
        return quota_pb2.ReserveManyResponse(outcomes=outcomes)

    async def _outcome(self, request: quota_pb2.ReserveRequest) -> quota_pb2.ReserveOutcome:
        token = logs.request_id.set(request.request_id)
        try:
            return quota_pb2.ReserveOutcome(admitted=await self.reserve(request))
        except ApiError as exc:
            return quota_pb2.ReserveOutcome(error=exc.to_proto())
        finally:
            logs.request_id.reset(token)

    async def reserve(self, request: quota_pb2.ReserveRequest) -> quota_pb2.ReserveResponse:
        """Admit one request, or raise its denial (429) or REDIS_DOWN (503, `fail_closed`)."""
        principal = request.principal
        owner = Owner.of(principal)
        allowance = (
            request.max_tokens if request.HasField("max_tokens") else self._default_max_tokens
        )
        cost = request.prompt_tokens + allowance
        pico = self._prices.worst_case(
            request.record.model, principal, request.prompt_tokens, allowance
        )
        micro = micro_usd(pico)
        settles = needs_settling(owner.key_limits) or needs_settling(owner.tenant_limits)
        # A lease makes settling exact once; a recorded request always needs one. The
        # edge names it (the record's id), so that a retried Reserve is the same admission.
        lease_id = (
            (request.record.id or secrets.token_hex(12)) if settles or self._recording else ""
        )
        settlements = self._settle_calls(request.settlements)
        if not (owner.limited or self._recording):
            await self._settle(settlements)
            return quota_pb2.ReserveResponse(
                lease_id="", reserved_tokens=cost, reserved_micro_usd=micro, rate_limit=_NO_STATE
            )
        at_s = request.record.started_unix_us / 1e6 or self._clock()
        call = self._buckets.reserve_call(
            owner,
            at_s,
            cost,
            micro,
            lease_id,
            self._lease_ttl_ms,
            self._lapse_record(request, lease_id, cost, pico, micro),
        )
        try:
            reserved = await self._buckets.reserve(owner, at_s, call, settlements)
        except (RedisError, OSError) as exc:
            REDIS_ERRORS.labels("reserve").inc()
            if settlements:
                REDIS_ERRORS.labels("settle").inc(len(settlements))
            extra = {
                "key_id": principal.key_id,
                "request_id": request.request_id,
                "error": type(exc).__name__,
            }
            if principal.redis_failure_policy == common_pb2.REDIS_FAILURE_POLICY_FAIL_OPEN:
                FAIL_OPEN_ADMISSIONS.inc()
                log.warning("redis unavailable, admitting (fail_open)", extra=extra)
                # Nothing was reserved; the settlement still brings the record.
                return quota_pb2.ReserveResponse(
                    lease_id=lease_id if self._recording else "",
                    reserved_tokens=0,
                    rate_limit=_NO_STATE,
                    unreserved=True,
                )
            log.error("redis unavailable, refusing (fail_closed)", extra=extra)
            raise REDIS_DOWN from None
        decision = reserved.decision
        if reserved.refused:
            _settle_refused(reserved.refused)
        if reserved.stranded:
            self.strand(reserved.stranded)
        DECISIONS.labels(decision.verdict.name.lower()).inc()
        if not decision.admitted:
            raise denial(decision, principal, cost, micro)
        return quota_pb2.ReserveResponse(
            lease_id=lease_id,
            reserved_tokens=cost,
            reserved_micro_usd=micro,
            rate_limit=decision.state,
        )

    async def Settle(
        self, request: quota_pb2.SettleRequest, context: Context
    ) -> quota_pb2.SettleResponse:
        if not await self._settle(self._settle_calls([request.settlement])):
            await SETTLE_FAILED.abort(context)
        return quota_pb2.SettleResponse()

    async def SettleMany(
        self, request: quota_pb2.SettleManyRequest, context: Context
    ) -> quota_pb2.SettleManyResponse:
        if not await self._settle(self._settle_calls(request.settlements)):
            await SETTLE_FAILED.abort(context)
        return quota_pb2.SettleManyResponse()

    async def _settle(self, settlements: list[Call]) -> bool:
        """One Redis round trip for all of them; False when Redis could not be reached,
        so that the caller keeps them and sends them again (settling is idempotent)."""
        if not settlements:
            return True
        try:
            refused = await self._buckets.settle_many(settlements)
        except (RedisError, OSError) as exc:
            REDIS_ERRORS.labels("settle").inc(len(settlements))
            log.error(
                "settle failed",
                extra={"settlements": len(settlements), "error": type(exc).__name__},
            )
            return False
        if refused:
            _settle_refused(refused)
        return True

    async def GetRateLimit(
        self, request: quota_pb2.GetRateLimitRequest, context: Context
    ) -> quota_pb2.GetRateLimitResponse:
        principal = request.principal
        owner = Owner.of(principal)
        if not owner.limited:
            return quota_pb2.GetRateLimitResponse(rate_limit=_NO_STATE)
        try:
            decision = await self._buckets.peek(owner, self._clock())
        except (RedisError, OSError):
            REDIS_ERRORS.labels("peek").inc()
            return quota_pb2.GetRateLimitResponse(rate_limit=_NO_STATE)
        return quota_pb2.GetRateLimitResponse(rate_limit=decision.state)


async def resettle_forever(service: QuotaService, interval_s: float) -> None:
    """Settlements stranded by a cluster master that was down go again, until they land."""
    while True:
        await asyncio.sleep(interval_s)
        await service.resettle()


async def sweep_forever(buckets: Buckets, interval_s: float) -> None:
    """Record lapsed leases now and then; every replica may, the script is atomic."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            swept = await buckets.sweep()
        except (RedisError, OSError) as exc:
            REDIS_ERRORS.labels("sweep").inc()
            log.warning("sweep failed", extra={"error": type(exc).__name__})
            continue
        if swept:
            LEASES_LAPSED.inc(swept)
            log.warning("lapsed leases recorded at their reservation", extra={"leases": swept})


async def run(config: Config) -> None:
    if not config.redis.configured:
        raise SystemExit("meshgate quota: redis.url is empty (set REDIS_URL or run `meshgate up`)")
    redis = await redis_client.open_client(config.redis, wait=True)
    # A lease outlives the longest request, so only a crashed request's lease lapses.
    lease_ttl_ms = int((config.edge.request_timeout_s + 5) * 1000)
    buckets = Buckets(redis, Layout(config.quota.shards))
    service = QuotaService(
        buckets,
        PriceBook(config.models),
        default_max_tokens=config.quota.default_max_tokens,
        lease_ttl_ms=lease_ttl_ms,
        recording=config.ledger.enabled,
    )
    sweeper = asyncio.create_task(sweep_forever(buckets, SWEEP_INTERVAL_S))
    resettler = asyncio.create_task(resettle_forever(service, RESETTLE_INTERVAL_S))

    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        quota_pb2_grpc.add_QuotaServiceServicer_to_server(service, server)
        return [quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name]

    cfg = config.services.quota
    try:
        await grpcio.serve("quota", cfg, setup, tls=config.tls)
    finally:
        for task in (sweeper, resettler):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await service.resettle()  # one last try; what is left lapses to the sweep
        await redis.aclose()
