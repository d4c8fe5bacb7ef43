"""Dollar budgets, tenants and the record buffer, at the quota algorithm against a real Redis.

These drive `services.quota.buckets` (the one atomic script) directly, so that a
test can choose the admission time: a daily budget must start again at UTC
midnight, which an injectable clock shows without a sleep. The mesh-level
tests (tests/test_quota.py, tests/test_ledger_faults.py) check the same rules
through real processes.
"""

from __future__ import annotations

import asyncio
import calendar
import secrets
from collections.abc import Awaitable, Callable, Iterator

import pytest
from redis.asyncio import Redis

from meshgate import shards
from meshgate.v1 import common_pb2, usage_pb2
from services.quota.buckets import Buckets, Layout, Owner, Verdict
from tests.support import RedisServer

SHARDS = 16
DAY = common_pb2.BUDGET_PERIOD_DAY
MONTH = common_pb2.BUDGET_PERIOD_MONTH
# 2026-12-01 23:59:59 UTC and one second later.
BEFORE_MIDNIGHT = calendar.timegm((2026, 12, 1, 23, 59, 59, 0, 0, 0))
AFTER_MIDNIGHT = BEFORE_MIDNIGHT + 1


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.kill()


Scenario = Callable[[Buckets], Awaitable[None]]
Run = Callable[[Scenario], None]


@pytest.fixture
def run(redis_server: RedisServer) -> Run:
    """Runs a scenario against fresh quota state (the script on an empty Redis)."""

    def run(scenario: Scenario) -> None:
        async def main() -> None:
            redis = Redis.from_url(redis_server.url)
            try:
                await redis.flushall()
                await scenario(Buckets(redis, Layout(SHARDS)))
            finally:
                await redis.aclose()

        asyncio.run(main())

    return run


def _owner(
    key_limits: common_pb2.Limits,
    tenant_limits: common_pb2.Limits | None = None,
    tenant: str = "",
    key_id: str = "",
) -> Owner:
    return Owner(
        key_id or "key_" + secrets.token_hex(8),
        tenant,
        key_limits,
        tenant_limits or common_pb2.Limits(),
    )


async def _reserve(
    buckets: Buckets, owner: Owner, at_s: float, micro_usd: int, record: bytes = b"x"
) -> tuple[Verdict, str]:
    lease = secrets.token_hex(12)
    call = buckets.reserve_call(owner, at_s, 10, micro_usd, lease, 60_000, record)
    decision = (await buckets.reserve(owner, at_s, call)).decision
    return decision.verdict, lease


async def _stream(buckets: Buckets, owner: Owner) -> list[usage_pb2.UsageRecord]:
    shard = buckets.layout.shard(owner)
    entries = await buckets._redis.xrange(shards.usage_stream(shard))
    return [usage_pb2.UsageRecord.FromString(fields[shards.RECORD_FIELD]) for _, fields in entries]


def test_a_daily_budget_starts_again_at_utc_midnight(run: Run) -> None:
    async def scenario(buckets: Buckets) -> None:
        owner = _owner(common_pb2.Limits(budget_micro_usd=1_000, budget_period=DAY))
        assert (await _reserve(buckets, owner, BEFORE_MIDNIGHT, 600))[0] is Verdict.ADMITTED
        assert (await _reserve(buckets, owner, BEFORE_MIDNIGHT, 600))[0] is Verdict.USD_BUDGET_SPENT
        assert (await _reserve(buckets, owner, AFTER_MIDNIGHT, 600))[0] is Verdict.ADMITTED
        assert (await _reserve(buckets, owner, AFTER_MIDNIGHT, 600))[0] is Verdict.USD_BUDGET_SPENT

    run(scenario)


def test_a_monthly_budget_spans_the_month_and_resets_on_the_first(run: Run) -> None:
    async def scenario(buckets: Buckets) -> None:
        owner = _owner(common_pb2.Limits(budget_micro_usd=1_000, budget_period=MONTH))
        first = calendar.timegm((2026, 11, 1, 0, 0, 0, 0, 0, 0))
        last = calendar.timegm((2026, 11, 30, 23, 59, 59, 0, 0, 0))
        assert (await _reserve(buckets, owner, first, 600))[0] is Verdict.ADMITTED
        assert (await _reserve(buckets, owner, last, 600))[0] is Verdict.USD_BUDGET_SPENT
        assert (await _reserve(buckets, owner, last + 1, 600))[0] is Verdict.ADMITTED

    run(scenario)


def test_a_total_budget_never_resets(run: Run) -> None:
    async def scenario(buckets: Buckets) -> None:
        owner = _owner(common_pb2.Limits(budget_micro_usd=1_000))
        assert (await _reserve(buckets, owner, BEFORE_MIDNIGHT, 1_000))[0] is Verdict.ADMITTED
        next_year = BEFORE_MIDNIGHT + 366 * 86400
        assert (await _reserve(buckets, owner, next_year, 1))[0] is Verdict.USD_BUDGET_SPENT

    run(scenario)


def test_a_settlement_after_midnight_corrects_the_day_it_was_charged_to(run: Run) -> None:
    async def scenario(buckets: Buckets) -> None:
        owner = _owner(common_pb2.Limits(budget_micro_usd=1_000, budget_period=DAY))
        verdict, lease = await _reserve(buckets, owner, BEFORE_MIDNIGHT, 900)
        assert verdict is Verdict.ADMITTED
        # It really cost 100; it settles after midnight but carries its admission time.
        settle = buckets.settle_call(owner, BEFORE_MIDNIGHT, lease, (10, 900), (10, 100), b"")
        assert await buckets.settle_many([settle]) == 0
        prefix = shards.key_prefix(buckets.layout.shard(owner), owner.key_id)
        redis = buckets._redis
        assert int(await redis.get(shards.spent_usd_key(prefix, "d2026-12-01"))) == 100
        assert await redis.get(shards.spent_usd_key(prefix, "d2026-12-02")) is None
        # The refund makes room again on that day.
        assert (await _reserve(buckets, owner, BEFORE_MIDNIGHT, 900))[0] is Verdict.ADMITTED

    run(scenario)


def test_a_tenant_budget_shared_by_two_keys_admits_exactly_what_fits(run: Run) -> None:
    async def scenario(buckets: Buckets) -> None:
        """100 reservations at once from two keys of one tenant: exactly k fit, none beyond."""
        cost, k = 250, 7
        tenant_limits = common_pb2.Limits(budget_micro_usd=cost * k)
        keys = [
            _owner(common_pb2.Limits(), tenant_limits, tenant="acme", key_id=f"key_{i}")
            for i in range(2)
        ]
        verdicts = await asyncio.gather(
            *(_reserve(buckets, keys[i % 2], BEFORE_MIDNIGHT, cost) for i in range(100))
        )
        admitted = [v for v, _ in verdicts if v is Verdict.ADMITTED]
        refused = [v for v, _ in verdicts if v is Verdict.USD_BUDGET_SPENT]
        assert (len(admitted), len(refused)) == (k, 100 - k)
        assert buckets.layout.shard(keys[0]) == buckets.layout.shard(
            keys[1]
        )  # one slot, one script

    run(scenario)


def test_a_key_limit_and_its_tenant_limit_both_hold(run: Run) -> None:
    async def scenario(buckets: Buckets) -> None:
        tenant_limits = common_pb2.Limits(requests_per_minute=3)
        a = _owner(common_pb2.Limits(requests_per_minute=2), tenant_limits, tenant="t1")
        b = _owner(common_pb2.Limits(), tenant_limits, tenant="t1")
        results = [(await _reserve(buckets, a, BEFORE_MIDNIGHT, 0))[0] for _ in range(3)]
        assert results == [Verdict.ADMITTED, Verdict.ADMITTED, Verdict.REQUESTS_EMPTY]
        lease = secrets.token_hex(12)
        call = buckets.reserve_call(b, BEFORE_MIDNIGHT, 10, 0, lease, 60_000, b"")
        decision = (await buckets.reserve(b, BEFORE_MIDNIGHT, call)).decision
        assert decision.verdict is Verdict.ADMITTED
        call = buckets.reserve_call(b, BEFORE_MIDNIGHT, 10, 0, lease + "2", 60_000, b"")
        decision = (await buckets.reserve(b, BEFORE_MIDNIGHT, call)).decision
        assert (decision.verdict, decision.subject.name) == (Verdict.REQUESTS_EMPTY, "TENANT")

    run(scenario)


def test_a_refused_reservation_charges_nothing(run: Run) -> None:
    async def scenario(buckets: Buckets) -> None:
        """The tenant refuses after the key would admit: neither is charged."""
        tenant_limits = common_pb2.Limits(budget_micro_usd=100)
        owner = _owner(
            common_pb2.Limits(requests_per_minute=10, budget_micro_usd=10_000), tenant_limits, "t2"
        )
        assert (await _reserve(buckets, owner, BEFORE_MIDNIGHT, 500))[0] is Verdict.USD_BUDGET_SPENT
        state = await buckets.peek(owner, BEFORE_MIDNIGHT)
        assert state.state.remaining_requests == 10
        assert state.state.remaining_budget_micro_usd == 100  # the tightest: the tenant's
        assert await _stream(buckets, owner) == []

    run(scenario)


def test_a_settlement_delivered_twice_records_once_and_refunds_once(run: Run) -> None:
    async def scenario(buckets: Buckets) -> None:
        owner = _owner(common_pb2.Limits(budget_micro_usd=10_000))
        verdict, lease = await _reserve(buckets, owner, BEFORE_MIDNIGHT, 5_000)
        assert verdict is Verdict.ADMITTED
        record = usage_pb2.UsageRecord(id=lease, key_id=owner.key_id, cost_pico_usd=123)
        settle = buckets.settle_call(
            owner, BEFORE_MIDNIGHT, lease, (10, 5_000), (10, 1_000), record.SerializeToString()
        )
        assert await buckets.settle_many([settle, settle]) == 0
        assert await buckets.settle_many([settle]) == 0
        assert await _stream(buckets, owner) == [record]
        state = await buckets.peek(owner, BEFORE_MIDNIGHT)
        assert state.state.remaining_budget_micro_usd == 9_000

    run(scenario)


def test_a_lapsed_lease_is_recorded_by_the_sweep_once_and_its_settlement_ignored(run: Run) -> None:
    async def scenario(buckets: Buckets) -> None:
        owner = _owner(common_pb2.Limits())
        lapse = usage_pb2.UsageRecord(
            id="lease-1", key_id=owner.key_id, outcome=usage_pb2.OUTCOME_EXPIRED
        )
        call = buckets.reserve_call(
            owner, BEFORE_MIDNIGHT, 10, 0, "lease-1", 1, lapse.SerializeToString()
        )
        decision = (await buckets.reserve(owner, BEFORE_MIDNIGHT, call)).decision
        assert decision.admitted
        await asyncio.sleep(0.01)  # the 1 ms lease lapses
        assert await buckets.sweep() == 1
        assert await buckets.sweep() == 0
        late = usage_pb2.UsageRecord(id="lease-1", key_id=owner.key_id)
        settle = buckets.settle_call(
            owner, BEFORE_MIDNIGHT, "lease-1", (10, 0), (10, 0), late.SerializeToString()
        )
        assert await buckets.settle_many([settle]) == 0
        assert await _stream(buckets, owner) == [lapse]

    run(scenario)


def test_a_reservation_retried_with_its_lease_is_the_same_admission(run: Run) -> None:
    """An edge that lost quota's answer asks again with the same lease: one charge, one lease."""

    async def scenario(buckets: Buckets) -> None:
        owner = _owner(common_pb2.Limits(requests_per_minute=5, budget_micro_usd=1_000))
        call = buckets.reserve_call(owner, BEFORE_MIDNIGHT, 10, 400, "lease-x", 60_000, b"r")
        for _ in range(3):
            decision = (await buckets.reserve(owner, BEFORE_MIDNIGHT, call)).decision
            assert decision.admitted
        state = (await buckets.peek(owner, BEFORE_MIDNIGHT)).state
        assert (state.remaining_requests, state.remaining_budget_micro_usd) == (4, 600)

    run(scenario)
