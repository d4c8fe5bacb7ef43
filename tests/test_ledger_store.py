"""The ledger's store against a real PostgreSQL: migrations, idempotent batches, monthly
partitions, summaries that agree with the raw records, and keyset pagination."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest

from meshgate.v1 import usage_pb2
from services.ledger import migrations
from services.ledger.store import (
    Bucket,
    Dimension,
    Filter,
    Rejected,
    Row,
    Store,
    Totals,
    decode_page_token,
    row_of,
    to_unix_us,
)

T = TypeVar("T")
# Three days across a month end (and so two partitions), starting on a ragged minute.
BASE = datetime(2026, 3, 30, 21, 17, 3, 250_000, tzinfo=UTC)
OUTCOMES = [
    usage_pb2.OUTCOME_COMPLETED,
    usage_pb2.OUTCOME_COMPLETED,
    usage_pb2.OUTCOME_COMPLETED,
    usage_pb2.OUTCOME_FAILED,
    usage_pb2.OUTCOME_CANCELLED,
    usage_pb2.OUTCOME_EXPIRED,
]


def record(
    n: int,
    started: datetime = BASE,
    *,
    key_id: str = "key-a",
    tenant: str = "acme",
    model: str = "meshgate/reference-pro",
    prompt: int = 10,
    completion: int = 20,
    cached: int = 0,
    cost_pico: int = 35_000_000,
    outcome: int = usage_pb2.OUTCOME_COMPLETED,
) -> usage_pb2.UsageRecord:
    """A record as quota writes it; `n` makes its id and request id unique."""
    start_us = to_unix_us(started)
    return usage_pb2.UsageRecord(
        id=f"lease-{n:06d}",
        request_id=f"req-{n:06d}",
        started_unix_us=start_us,
        ended_unix_us=start_us + 1_500_000,
        key_id=key_id,
        tenant=tenant,
        model=model,
        endpoint=usage_pb2.ENDPOINT_CHAT_COMPLETIONS,
        stream=n % 2 == 0,
        outcome=outcome,  # type: ignore[arg-type]
        status=200 if outcome == usage_pb2.OUTCOME_COMPLETED else 502,
        error_code="" if outcome == usage_pb2.OUTCOME_COMPLETED else "upstream_error",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cost_pico_usd=cost_pico,
        reserved_tokens=prompt + 1024,
        reserved_micro_usd=1_600,
        replica="127.0.0.1:50055",
        latency_us=1_500_000,
        ttft_us=120_000 if n % 2 == 0 else 0,
    )


def random_records(count: int, seed: int = 7, start: int = 0) -> list[usage_pb2.UsageRecord]:
    """A mixed population over 3 days: 4 keys in 2 tenants (and none), 3 models."""
    rng = random.Random(seed)
    keys = [("key-a", "acme"), ("key-b", "acme"), ("key-c", "globex"), ("key-d", "")]
    models = ["meshgate/reference-pro", "meshgate/reference-mini", "bge-m3"]
    out = []
    for n in range(start, start + count):
        key_id, tenant = rng.choice(keys)
        prompt, completion = rng.randint(1, 5000), rng.randint(0, 2000)
        cached = rng.randint(0, prompt) if rng.random() < 0.3 else 0
        # pico-dollars: 0.5 / 0.25 / 1.5 USD per million tokens, exact integers.
        cost = (prompt - cached) * 500_000 + cached * 250_000 + completion * 1_500_000
        offset = timedelta(microseconds=rng.randint(0, 3 * 86_400 * 10**6))
        out.append(
            record(
                n,
                BASE + offset,
                key_id=key_id,
                tenant=tenant,
                model=rng.choice(models),
                prompt=prompt,
                completion=completion,
                cached=cached,
                cost_pico=cost,
                outcome=rng.choice(OUTCOMES),
            )
        )
    return out


def rows(records: Iterable[usage_pb2.UsageRecord]) -> list[Row]:
    return [row_of(r) for r in records]


def run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(factory())


async def opened(url: str) -> Store:
    store = await Store.open(url)
    await store.migrate()
    return store


async def fetch(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def expected_totals(
    records: Sequence[usage_pb2.UsageRecord],
    flt: Filter,
    group_by: Sequence[Dimension],
    bucket: Bucket | None,
) -> list[Totals]:
    """What a summary must say, computed in Python from the records themselves."""
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * 6)
    for r in records:
        started = row_of(r).started_at
        if flt.key_id and r.key_id != flt.key_id:
            continue
        if flt.tenant and r.tenant != flt.tenant:
            continue
        if flt.model and r.model != flt.model:
            continue
        if (flt.since and started < flt.since) or (flt.until and started >= flt.until):
            continue
        if bucket == "hour":
            start: datetime | None = started.replace(minute=0, second=0, microsecond=0)
        elif bucket == "day":
            start = started.replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            start = None
        values = {"key_id": r.key_id, "tenant": r.tenant, "model": r.model}
        key = (start, *(values[d] if d in group_by else "" for d in ("key_id", "tenant", "model")))
        totals = groups[key]
        for i, amount in enumerate(
            (
                1,
                r.prompt_tokens,
                r.completion_tokens,
                r.cached_tokens,
                r.cost_pico_usd,
                int(r.outcome != usage_pb2.OUTCOME_COMPLETED),
            )
        ):
            totals[i] += amount
    if not group_by and bucket is None and not groups:
        groups[(None, "", "", "")] = [0] * 6
    return [Totals(*key, *values) for key, values in groups.items()]


def canonical(totals: Iterable[Totals]) -> list[Totals]:
    return sorted(
        totals,
        key=lambda t: (t.bucket_start or BASE, t.key_id, t.tenant, t.model),
    )


# ------------------------------------------------------------------ migrations ----


def test_migrations_apply_once_and_are_recorded(postgres_url: str) -> None:
    async def scenario() -> tuple[list[int], list[int], list[tuple[Any, ...]]]:
        conn = await asyncpg.connect(postgres_url)
        try:
            first = await migrations.migrate(conn)
            second = await migrations.migrate(conn)
        finally:
            await conn.close()
        return first, second, await fetch(postgres_url, "SELECT version FROM schema_migrations")

    first, second, recorded = run(scenario)
    assert first == [m.version for m in migrations.MIGRATIONS] == [1, 2, 3]
    assert second == []
    assert recorded == [(1,), (2,), (3,)]


def test_replicas_migrating_at_once_apply_each_version_exactly_once(postgres_url: str) -> None:
    async def scenario() -> list[list[int]]:
        conns = [await asyncpg.connect(postgres_url) for _ in range(8)]
        try:
            return list(await asyncio.gather(*(migrations.migrate(c) for c in conns)))
        finally:
            for conn in conns:
                await conn.close()

    results = run(scenario)
    assert sorted(results) == [[]] * 7 + [[1, 2, 3]]
    tables = run(
        lambda: fetch(
            postgres_url,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
    )
    assert [t for (t,) in tables] == [
        "audit_events",
        "schema_migrations",
        "usage_hourly",
        "usage_records",
    ]


# ---------------------------------------------------------------------- writes ----


def test_a_batch_written_twice_counts_once_in_records_and_rollup(postgres_url: str) -> None:
    batch = rows(random_records(200))

    async def scenario() -> tuple[int, int, int, list[tuple[Any, ...]]]:
        store = await opened(postgres_url)
        try:
            first = len(await store.insert(batch))
            # Half of it again, plus one duplicate inside the batch itself.
            second = len(await store.insert([*batch[:100], batch[0]]))
            third = len(await store.insert(batch))
        finally:
            await store.close()
        sums = await fetch(
            postgres_url,
            "SELECT (SELECT count(*) FROM usage_records), (SELECT sum(requests) FROM usage_hourly),"
            " (SELECT sum(cost_pico_usd) FROM usage_records),"
            " (SELECT sum(cost_pico_usd) FROM usage_hourly)",
        )
        return first, second, third, sums

    first, second, third, sums = run(scenario)
    assert (first, second, third) == (200, 0, 0)
    total_cost = sum(row.cost_pico_usd for row in batch)
    assert sums == [(200, 200, total_cost, total_cost)]


def test_insert_returns_only_the_new_rows(postgres_url: str) -> None:
    batch = rows(random_records(10))

    async def scenario() -> list[str]:
        store = await opened(postgres_url)
        try:
            await store.insert(batch[:4])
            new = await store.insert(batch)
        finally:
            await store.close()
        return [row.id for row in new]

    assert run(scenario) == [row.id for row in batch[4:]]


def test_each_month_gets_its_partition_and_rows_land_in_it(postgres_url: str) -> None:
    records = [
        record(1, datetime(2025, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        record(2, datetime(2026, 1, 1, tzinfo=UTC)),
        record(3, datetime(2026, 2, 14, 12, tzinfo=UTC)),
    ]

    async def scenario() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        store = await opened(postgres_url)
        try:
            await store.insert(rows(records))
            # Another process (a fresh cache) writing the same months is fine too.
            other = await opened(postgres_url)
            await other.insert(rows([record(4, datetime(2026, 1, 2, tzinfo=UTC))]))
            await other.close()
        finally:
            await store.close()
        partitions = await fetch(
            postgres_url,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'usage_records'::regclass ORDER BY 1",
        )
        placed = await fetch(
            postgres_url, "SELECT id, tableoid::regclass::text FROM usage_records ORDER BY id"
        )
        return partitions, placed

    partitions, placed = run(scenario)
    assert partitions == [
        ("usage_records_y2025m12",),
        ("usage_records_y2026m01",),
        ("usage_records_y2026m02",),
    ]
    assert placed == [
        ("lease-000001", "usage_records_y2025m12"),
        ("lease-000002", "usage_records_y2026m01"),
        ("lease-000003", "usage_records_y2026m02"),
        ("lease-000004", "usage_records_y2026m01"),
    ]


def test_concurrent_writers_of_a_new_month_create_its_partition_once(postgres_url: str) -> None:
    async def scenario() -> int:
        stores = [await opened(postgres_url) for _ in range(4)]
        try:
            month = datetime(2027, 6, 1, tzinfo=UTC)
            batches = [
                rows(record(100 * s + i, month + timedelta(hours=i)) for i in range(20))
                for s in range(4)
            ]
            written = await asyncio.gather(
                *(store.insert(batch) for store, batch in zip(stores, batches, strict=True))
            )
        finally:
            for store in stores:
                await store.close()
        return sum(len(w) for w in written)

    assert run(scenario) == 80


def test_a_row_the_database_refuses_is_rejected_and_nothing_is_written(postgres_url: str) -> None:
    # Two records whose tokens overflow the hour's bigint total: the data itself is refused.
    huge = [record(1, prompt=2**62), record(2, prompt=2**62)]

    async def scenario() -> list[tuple[Any, ...]]:
        store = await opened(postgres_url)
        try:
            with pytest.raises(Rejected, match="out of range"):
                await store.insert(rows(huge))
        finally:
            await store.close()
        return await fetch(postgres_url, "SELECT count(*) FROM usage_records")

    assert run(scenario) == [(0,)]


def test_text_with_nul_and_unknown_enums_are_stored_not_refused(postgres_url: str) -> None:
    odd = record(1, model="bad\x00model")
    odd.endpoint = 9  # type: ignore[assignment]  # a newer writer's endpoint

    async def scenario() -> list[usage_pb2.UsageRecord]:
        store = await opened(postgres_url)
        try:
            await store.insert(rows([odd]))
            page, _ = await store.list_records(Filter(), 10)
        finally:
            await store.close()
        return page

    (stored,) = run(scenario)
    assert stored.model == "bad\ufffdmodel"
    assert stored.endpoint == usage_pb2.ENDPOINT_UNSPECIFIED
    stored_endpoint = run(lambda: fetch(postgres_url, "SELECT endpoint FROM usage_records"))
    assert stored_endpoint == [("unknown-9",)]


def test_records_that_cannot_be_stored_are_refused_before_the_database() -> None:
    with pytest.raises(ValueError, match="no id"):
        row_of(usage_pb2.UsageRecord(request_id="r"))
    with pytest.raises(ValueError, match="out of range"):
        row_of(usage_pb2.UsageRecord(id="x", started_unix_us=2**62))


# ------------------------------------------------------------------- summaries ----

SUMMARY_RECORDS = random_records(600, seed=11)
WHOLE_SINCE = datetime(2026, 3, 31, 2, tzinfo=UTC)
WHOLE_UNTIL = datetime(2026, 4, 1, 19, tzinfo=UTC)
RAGGED_SINCE = datetime(2026, 3, 31, 2, 37, 11, 5, tzinfo=UTC)
RAGGED_UNTIL = datetime(2026, 4, 1, 18, 59, 59, 999_999, tzinfo=UTC)
CASES: list[tuple[str, Filter, list[Dimension], Bucket | None]] = [
    ("grand total", Filter(), [], None),
    ("by key and model", Filter(), ["key_id", "model"], None),
    ("by tenant per day", Filter(), ["tenant"], "day"),
    ("by model per hour", Filter(), ["model"], "hour"),
    ("rollup only: whole hours", Filter(since=WHOLE_SINCE, until=WHOLE_UNTIL), ["key_id"], "hour"),
    ("rollup and raw: ragged ends", Filter(since=RAGGED_SINCE, until=RAGGED_UNTIL), ["key_id", "tenant", "model"], "day"),
    ("ragged since, open end", Filter(since=RAGGED_SINCE), ["model"], "hour"),
    ("open start, ragged until", Filter(until=RAGGED_UNTIL), ["tenant"], None),
    ("raw only: inside one hour", Filter(since=RAGGED_SINCE, until=RAGGED_SINCE + timedelta(minutes=20)), ["key_id"], "hour"),
    ("one key, by model", Filter(key_id="key-b"), ["model"], "day"),
    ("one tenant, one model", Filter(tenant="acme", model="bge-m3", since=RAGGED_SINCE), [], "day"),
    ("nothing matches", Filter(key_id="nobody"), [], None),
    ("nothing matches, grouped", Filter(key_id="nobody"), ["model"], "hour"),
]  # fmt: skip


@pytest.fixture(scope="module")
def summary_store_url(postgres_server: Any) -> str:
    url: str = postgres_server.create_database("t_ledger_summaries")

    async def load() -> None:
        store = await opened(url)
        try:
            await store.insert(rows(SUMMARY_RECORDS[:250]))
            await store.insert(rows(SUMMARY_RECORDS[200:]))  # an overlap: redelivered records
        finally:
            await store.close()

    run(load)
    return url


@pytest.mark.parametrize(("name", "flt", "group_by", "bucket"), CASES, ids=[c[0] for c in CASES])
def test_summaries_agree_with_the_raw_records(
    summary_store_url: str,
    name: str,
    flt: Filter,
    group_by: list[Dimension],
    bucket: Bucket | None,
) -> None:
    async def scenario() -> list[Totals]:
        store = await Store.open(summary_store_url)
        try:
            return await store.summarize(flt, group_by, bucket)
        finally:
            await store.close()

    got = run(scenario)
    assert canonical(got) == canonical(expected_totals(SUMMARY_RECORDS, flt, group_by, bucket))
    assert got == canonical(got), "rows are ordered by bucket, then the groups"


def test_the_rollup_equals_the_raw_records_hour_by_hour(summary_store_url: str) -> None:
    compare = """
        SELECT date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
               key_id, tenant, model, count(*), sum(prompt_tokens), sum(completion_tokens),
               sum(cached_tokens), sum(cost_pico_usd)::numeric,
               count(*) FILTER (WHERE outcome <> 'completed')
        FROM usage_records GROUP BY 1, 2, 3, 4
        EXCEPT
        SELECT hour, key_id, tenant, model, requests, prompt_tokens, completion_tokens,
               cached_tokens, cost_pico_usd, errors
        FROM usage_hourly
    """
    assert run(lambda: fetch(summary_store_url, compare)) == []
    total = run(lambda: fetch(summary_store_url, "SELECT sum(requests) FROM usage_hourly"))
    assert total == [(len(SUMMARY_RECORDS),)]


def test_whole_hours_are_read_from_the_rollup_and_ragged_edges_from_the_records(
    postgres_url: str,
) -> None:
    """Marking the rollup shows which path each part of a range took."""
    hour = datetime(2026, 5, 4, 10, tzinfo=UTC)
    population = [record(i, hour + timedelta(minutes=10 * i)) for i in range(12)]  # 10:00-11:50

    async def scenario() -> list[int]:
        store = await opened(postgres_url)
        try:
            await store.insert(rows(population))
            conn = await asyncpg.connect(postgres_url)
            await conn.execute("UPDATE usage_hourly SET requests = requests + 1000")
            await conn.close()
            spans = [
                (hour, hour + timedelta(hours=2)),  # two whole hours: the rollup
                (hour + timedelta(minutes=5), hour + timedelta(hours=2)),  # 10:05-12:00
                (hour + timedelta(minutes=5), hour + timedelta(minutes=55)),  # inside one hour
            ]
            totals = [await store.summarize(Filter(since=a, until=b)) for a, b in spans]
        finally:
            await store.close()
        return [t.requests for (t,) in totals]

    assert run(scenario) == [12 + 2000, 11 + 1000, 5]


# ------------------------------------------------------------------ pagination ----


def test_pages_walk_every_record_newest_first_without_gaps_or_repeats(postgres_url: str) -> None:
    population = random_records(230, seed=3)
    # Ties on started_at are broken by id.
    population += [record(900 + i, BASE + timedelta(hours=5)) for i in range(7)]

    async def walk(store: Store, flt: Filter, size: int) -> list[str]:
        seen: list[str] = []
        token = ""
        while True:
            page, token = await store.list_records(flt, size, token)
            assert len(page) <= size
            seen += [r.id for r in page]
            if not token:
                return seen

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        store = await opened(postgres_url)
        try:
            await store.insert(rows(population))
            everything = await walk(store, Filter(), 37)
            one_key = await walk(store, Filter(key_id="key-c", since=RAGGED_SINCE), 10)
            exact = await walk(store, Filter(), len(population))
        finally:
            await store.close()
        return everything, one_key, exact

    everything, one_key, exact = run(scenario)
    newest_first = sorted(population, key=lambda r: (r.started_unix_us, r.id), reverse=True)
    assert everything == [r.id for r in newest_first]
    assert exact == everything
    assert one_key == [
        r.id
        for r in newest_first
        if r.key_id == "key-c" and r.started_unix_us >= to_unix_us(RAGGED_SINCE)
    ]


def test_records_come_back_as_they_went_in(postgres_url: str) -> None:
    original = record(5, BASE, cached=4, outcome=usage_pb2.OUTCOME_CANCELLED)

    async def scenario() -> list[usage_pb2.UsageRecord]:
        store = await opened(postgres_url)
        try:
            await store.insert(rows([original]))
            page, token = await store.list_records(Filter(), 100)
            assert token == ""
            return page
        finally:
            await store.close()

    assert run(scenario) == [original]


def test_a_page_token_from_elsewhere_is_refused() -> None:
    for token in ("not base64!", "bm90LWEtdG9rZW4", "OTk5OTk5OTk5OTk5OTk5OTk5Ojp4"):
        with pytest.raises(ValueError, match="page_token"):
            decode_page_token(token)


# ------------------------------------------------------------------ throughput ----


def test_insert_throughput_in_batches_of_500(postgres_url: str) -> None:
    """Prints rows/s; the bound is loose (two busy cores), the figure goes in the report."""
    batches = [rows(random_records(500, seed=s, start=500 * s)) for s in range(20)]

    async def scenario() -> tuple[float, int]:
        store = await opened(postgres_url)
        try:
            await store.insert(rows([record(999_999)]))  # partitions and plan warm
            started = time.perf_counter()
            written = 0
            for batch in batches:
                written += len(await store.insert(batch))
            return time.perf_counter() - started, written
        finally:
            await store.close()

    elapsed, written = run(scenario)
    assert written == 10_000
    rate = written / elapsed
    print(
        f"\nledger insert: {written} rows in {elapsed:.2f}s = {rate:,.0f} rows/s (batches of 500)"
    )
    assert rate > 500
