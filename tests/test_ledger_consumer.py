"""The ledger's stream consumer against a real Redis and a real PostgreSQL: records move
from the shards' streams to the database exactly once, through outages and dead replicas."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import pytest
from redis.asyncio import Redis

from meshgate import redis_client, shards
from meshgate.config import RedisConfig
from meshgate.v1 import usage_pb2
from services.ledger.consumer import Consumer
from services.ledger.store import Store
from tests.support import PostgresServer, RedisServer
from tests.test_ledger_store import fetch, random_records, record, rows

SHARDS = 16
T = TypeVar("T")


@pytest.fixture
def redis_server() -> Any:
    server = RedisServer().start()
    yield server
    server.kill()


def stream_of(r: usage_pb2.UsageRecord) -> str:
    return shards.usage_stream(shards.shard_of(r.tenant, r.key_id, SHARDS))


async def xadd(redis: Redis, records: Iterable[usage_pb2.UsageRecord]) -> None:
    """What quota does at settlement: each record to its shard's stream."""
    async with redis.pipeline(transaction=False) as pipe:
        for r in records:
            pipe.xadd(stream_of(r), {shards.RECORD_FIELD: r.SerializeToString()})
        await pipe.execute()


async def stream_lengths(redis: Redis) -> int:
    return sum([await redis.xlen(shards.usage_stream(s)) for s in range(SHARDS)])


async def pending(redis: Redis) -> int:
    total = 0
    for s in range(SHARDS):
        with_group = await redis.exists(shards.usage_stream(s))
        if with_group:
            info = await redis.xpending(shards.usage_stream(s), shards.LEDGER_GROUP)
            total += int(info["pending"])
    return total


async def counts(url: str) -> tuple[int, int, int]:
    """(records, distinct request ids, requests in the rollup)."""
    ((n, distinct, rolled),) = await fetch(
        url,
        "SELECT count(*), count(DISTINCT request_id), "
        "(SELECT coalesce(sum(requests), 0) FROM usage_hourly) FROM usage_records",
    )
    return int(n), int(distinct), int(rolled)


async def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def consumer(
    redis_url: str, db_url: str, name: str, **options: Any
) -> AsyncIterator[Consumer]:
    """A running consumer (its own Redis and database connections), stopped on exit."""
    redis = redis_client.connect(RedisConfig(url=redis_url))
    store = await Store.open(db_url)
    await store.migrate()
    options = {"batch_size": 500, "claim_idle_ms": 60_000, **options}
    running = Consumer(redis, store, shards=SHARDS, name=name, **options)
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 20)
        await store.close()
        await redis.aclose()


async def written(url: str, expected: int) -> bool:
    try:
        return (await counts(url))[0] >= expected
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


def test_records_are_written_then_acknowledged_and_deleted(
    redis_server: RedisServer, postgres_url: str
) -> None:
    records = random_records(1200, seed=5)

    async def scenario() -> None:
        redis = redis_server_client(redis_server)
        async with consumer(redis_server.url, postgres_url, "one") as ledger:
            started = time.monotonic()
            await xadd(redis, records[:1])
            await until(lambda: written(postgres_url, 1), what="the first record")
            first_latency = time.monotonic() - started
            await xadd(redis, records[1:])
            await until(lambda: written(postgres_url, len(records)), what="every record")
            await until(lambda: _zero(stream_lengths(redis)), what="empty streams")
            assert await pending(redis) == 0
            assert ledger.stats.written == len(records)
            assert ledger.stats.duplicates == ledger.stats.poison == 0
        assert await counts(postgres_url) == (len(records),) * 3
        ((cost,),) = await fetch(postgres_url, "SELECT sum(cost_pico_usd) FROM usage_records")
        assert cost == sum(r.cost_pico_usd for r in records)
        print(f"\nfirst record in the database {first_latency * 1000:.0f} ms after XADD")
        assert first_latency < 5
        await redis.aclose()

    asyncio.run(scenario())


async def _zero(value: Any) -> bool:
    return await value == 0


def redis_server_client(server: RedisServer) -> Redis:
    return Redis.from_url(server.url, socket_timeout=5)


class OnAnotherThread:
    """An event loop in a thread of its own, so that the main thread may stop and start
    the database (PostgresServer's calls run their own event loop, and the server dies
    with the thread that started it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_a_database_outage_loses_and_duplicates_nothing(
    redis_server: RedisServer, postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Records keep arriving while the database is stopped; all are written once after."""
    records = random_records(1500, seed=9)
    background = OnAnotherThread()
    redis = redis_server_client(redis_server)
    running = consumer(redis_server.url, postgres_url, "outage", max_backoff_s=0.5)

    async def produce() -> None:
        for start in range(0, len(records), 50):
            await xadd(redis, records[start : start + 50])
            await asyncio.sleep(0.1)

    async def begin() -> tuple[Consumer, asyncio.Task[None]]:
        return await running.__aenter__(), asyncio.create_task(produce())

    async def finish(producer: asyncio.Task[None]) -> None:
        await producer
        await until(lambda: written(postgres_url, len(records)), 30, "every record")
        await until(lambda: _zero(stream_lengths(redis)), what="empty streams")

    try:
        ledger, producer = background.run(begin())
        background.run(until(lambda: written(postgres_url, 100), what="writes before the outage"))
        postgres_server.stop()
        time.sleep(1.5)
        # Nothing is acknowledged while the database is away: the streams hold it all.
        waiting = background.run(stream_lengths(redis))
        assert waiting > 0 and ledger.stats.write_errors > 0
        assert 0 < ledger.stats.lag <= waiting  # measured meanwhile, at most 1 s ago
        postgres_server.start()
        background.run(finish(producer))
        assert background.run(pending(redis)) == 0
        print(
            f"\noutage: {waiting} records waited in Redis, "
            f"{ledger.stats.write_errors} failed writes retried, "
            f"{ledger.stats.written} written, {ledger.stats.duplicates} duplicates"
        )
        background.run(running.__aexit__(None, None, None))
        assert background.run(counts(postgres_url)) == (len(records),) * 3
        background.run(redis.aclose())
    finally:
        background.close()


def test_two_consumers_share_the_streams_and_write_each_record_once(
    redis_server: RedisServer, postgres_url: str
) -> None:
    records = random_records(3000, seed=13)

    async def scenario() -> None:
        redis = redis_server_client(redis_server)
        async with (
            consumer(redis_server.url, postgres_url, "a", batch_size=100) as a,
            consumer(redis_server.url, postgres_url, "b", batch_size=100) as b,
        ):
            for start in range(0, len(records), 200):
                await xadd(redis, records[start : start + 200])
                await asyncio.sleep(0.02)
            await until(lambda: written(postgres_url, len(records)), 30, "every record")
            await until(lambda: _zero(stream_lengths(redis)), what="empty streams")
            assert a.stats.written + b.stats.written == len(records)
            assert a.stats.duplicates == b.stats.duplicates == 0
            print(f"\nsplit: a wrote {a.stats.written}, b wrote {b.stats.written}")
        assert await counts(postgres_url) == (len(records),) * 3
        await redis.aclose()

    asyncio.run(scenario())


def test_a_dead_replicas_entries_are_claimed_and_written_once(
    redis_server: RedisServer, postgres_url: str
) -> None:
    """A replica read 40 entries and died: it had committed 15 of them, acknowledged none."""
    records = random_records(40, seed=17)

    async def scenario() -> None:
        redis = redis_server_client(redis_server)
        for s in range(SHARDS):
            await redis.xgroup_create(
                shards.usage_stream(s), shards.LEDGER_GROUP, id="0", mkstream=True
            )
        await xadd(redis, records)
        for s in range(SHARDS):  # the dead replica's reads: now in its pending list
            await redis.xreadgroup(
                shards.LEDGER_GROUP, "dead", {shards.usage_stream(s): ">"}, count=100
            )
        assert await pending(redis) == len(records)
        store = await Store.open(postgres_url)
        await store.migrate()
        await store.insert(rows(records[:15]))  # committed just before the kill
        await store.close()

        async with consumer(
            redis_server.url, postgres_url, "survivor", claim_idle_ms=300
        ) as survivor:
            await until(lambda: written(postgres_url, len(records)), what="the claimed records")
            await until(lambda: _zero(stream_lengths(redis)), what="empty streams")
            assert survivor.stats.redeliveries == len(records)
            assert survivor.stats.written == 25
            assert survivor.stats.duplicates == 15
        assert await pending(redis) == 0
        assert await counts(postgres_url) == (len(records),) * 3
        await redis.aclose()

    asyncio.run(scenario())


def test_poison_entries_are_counted_acknowledged_and_skipped(
    redis_server: RedisServer, postgres_url: str
) -> None:
    good = random_records(30, seed=21)
    # The database refuses the second of these (the hour's token total overflows).
    overflow = [record(500, prompt=2**62), record(501, prompt=2**62)]

    async def scenario() -> None:
        redis = redis_server_client(redis_server)
        stream = shards.usage_stream(0)
        await redis.xadd(stream, {shards.RECORD_FIELD: b"\xff\xfe not a protobuf"})
        await redis.xadd(stream, {b"other": b"field"})
        await redis.xadd(stream, {shards.RECORD_FIELD: usage_pb2.UsageRecord().SerializeToString()})
        await xadd(redis, good[:15])
        await xadd(redis, overflow)
        await xadd(redis, good[15:])
        async with consumer(redis_server.url, postgres_url, "careful") as ledger:
            await until(lambda: written(postgres_url, len(good) + 1), what="the good records")
            await until(lambda: _zero(stream_lengths(redis)), what="empty streams")
            assert ledger.stats.poison == 4
            assert ledger.stats.written == len(good) + 1
        assert await pending(redis) == 0
        ids = {r for (r,) in await fetch(postgres_url, "SELECT id FROM usage_records")}
        assert ids == {r.id for r in good} | {overflow[0].id}
        await redis.aclose()

    asyncio.run(scenario())


def test_idle_consumers_without_entries_are_removed(
    redis_server: RedisServer, postgres_url: str
) -> None:
    async def scenario() -> None:
        redis = redis_server_client(redis_server)
        stream = shards.usage_stream(3)
        await redis.xgroup_create(stream, shards.LEDGER_GROUP, id="0", mkstream=True)
        done = await redis.xadd(stream, {shards.RECORD_FIELD: record(1).SerializeToString()})
        await redis.xreadgroup(shards.LEDGER_GROUP, "gone", {stream: ">"})
        await redis.xack(stream, shards.LEDGER_GROUP, done)  # it wrote what it read, then died
        await redis.xdel(stream, done)
        await redis.xadd(stream, {shards.RECORD_FIELD: record(2).SerializeToString()})
        await redis.xreadgroup(shards.LEDGER_GROUP, "holding", {stream: ">"})  # died holding one
        await asyncio.sleep(0.3)
        async with consumer(redis_server.url, postgres_url, "new", forget_idle_ms=200) as ledger:
            await until(lambda: _true(ledger.stats.forgotten), what="a pass over the consumers")
            names = {c["name"] for c in await redis.xinfo_consumers(stream, shards.LEDGER_GROUP)}
        assert ledger.stats.forgotten == ["gone"]
        assert b"gone" not in names and b"holding" in names
        await redis.aclose()

    asyncio.run(scenario())


async def _true(value: Any) -> bool:
    return bool(value)


def test_a_stream_removed_from_redis_is_joined_again(
    redis_server: RedisServer, postgres_url: str
) -> None:
    """A Redis without persistence restarts empty: the group is recreated, records flow."""

    async def scenario() -> None:
        redis = redis_server_client(redis_server)
        async with consumer(redis_server.url, postgres_url, "rejoin"):
            await xadd(redis, [record(1)])
            await until(lambda: written(postgres_url, 1), what="the first record")
            await redis.flushall()
            await xadd(redis, [record(2)])
            await until(lambda: written(postgres_url, 2), what="a record after the flush")
        await redis.aclose()

    asyncio.run(scenario())
