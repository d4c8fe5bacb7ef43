"""Moves settled records from the shards' Redis Streams into the database, exactly once.

Quota XADDs each record to its shard's stream in the same atomic step that
settles the lease. Every ledger replica joins one consumer group on every
stream, so each entry is delivered to one replica at a time; the replica
inserts the batch (idempotently, keyed by the record's id) and only after the
commit acknowledges and deletes the entries. So a stream holds exactly the
records not yet written, and its length is the lag.

- The database is down: the batch is kept and retried with capped backoff; it
  is never acknowledged first. Nothing is lost, and the entries wait in Redis.
- A replica dies holding entries: after `claim_idle_ms` another replica claims
  them (XAUTOCLAIM) and writes them; if the dead one had committed, they
  conflict and count as duplicates, never twice.
- An entry that is not a record, or that the database refuses as data, is
  logged whole (base64), counted, and acknowledged: it never blocks the stream.

Streams are read shard by shard (pipelined, one round trip), never with one
multi-key XREADGROUP, because the shards live in different hash slots. On Redis
Cluster the pipeline goes to each shard's master at once (redis-py groups its
commands by node), and every script call names one stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import prometheus_client
from google.protobuf.message import DecodeError
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import NoScriptError, RedisError, ResponseError

from meshgate.redis_client import Client
from meshgate.shards import LEDGER_GROUP, RECORD_FIELD, usage_stream
from meshgate.v1 import usage_pb2
from services.ledger.store import Rejected, Row, Store, row_of

log = logging.getLogger("meshgate.ledger")

RECORDS_WRITTEN = prometheus_client.Counter(
    "meshgate_ledger_records_written", "Usage records newly written to the database."
)
REDELIVERIES = prometheus_client.Counter(
    "meshgate_ledger_redeliveries",
    "Stream entries claimed from a replica that read them but did not confirm them.",
)
DUPLICATES = prometheus_client.Counter(
    "meshgate_ledger_duplicates", "Records already in the database when written (skipped)."
)
POISON = prometheus_client.Counter(
    "meshgate_ledger_poison_records",
    "Stream entries that were not a storable record: logged, acknowledged, skipped.",
)
LAG = prometheus_client.Gauge(
    "meshgate_ledger_lag_records", "Entries in the usage streams not yet written (all shards)."
)
WRITE_ERRORS = prometheus_client.Counter(
    "meshgate_ledger_write_errors", "Batch writes that failed and will be retried."
)
SPEND = prometheus_client.Counter(
    "meshgate_spend_usd", "Spend in US dollars, from newly written records.", ["model", "tenant"]
)
TOKENS = prometheus_client.Counter(
    "meshgate_billed_tokens",
    "Billed tokens from newly written records; direction is input, output or cached_input "
    "(the part of input served from a prompt cache).",
    ["model", "tenant", "direction"],
)

# How often the lag gauge and this and next month's partitions are refreshed, in seconds.
_MAINTAIN_S = 1.0
# How often consumers of dead replicas are looked for, in seconds.
_FORGET_EVERY_S = 60.0
# A failure is logged at once, then at most this often while it lasts, in seconds.
_LOG_EVERY_S = 30.0
_TRANSIENT = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

# Acknowledge and delete in one atomic step, so a crash cannot leave an entry that is
# acknowledged (never redelivered) but still counted in the stream's length.
# KEYS[1] a shard's usage stream. ARGV[1] the group; ARGV[2..] entry ids now in the database.
# Returns the number of entries deleted.
_ACK_DELETE = """
local deleted = 0
for i = 2, #ARGV, 500 do
  local ids = {unpack(ARGV, i, math.min(i + 499, #ARGV))}
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  deleted = deleted + redis.call('XDEL', KEYS[1], unpack(ids))
end
return deleted
"""

# Remove the group's consumers that hold nothing and have not been seen for a while, in
# one atomic step, so that none can take an entry between the check and its removal
# (removing a consumer drops its pending entries, which then could never be claimed).
# KEYS[1] a shard's usage stream. ARGV[1] the group, ARGV[2] the caller's consumer (kept),
# ARGV[3] idle milliseconds. Returns the names removed.
_FORGET = """
local removed = {}
if redis.call('EXISTS', KEYS[1]) == 0 then return removed end
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers.err then return removed end
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info.name ~= ARGV[2] and info.pending == 0 and info.idle > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info.name)
    removed[#removed + 1] = info.name
  end
end
return removed
"""


class _Script:
    """A Lua script run once per shard in one pipelined round trip (EVALSHA).

    When Redis has lost it (a restart, SCRIPT FLUSH) it is loaded and the batch
    sent again; each script is idempotent, so a partly run batch may repeat.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = ""

    async def run(self, redis: Client, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """`calls` are (key, args); returns each call's reply, raising the first error."""
        if not self.sha:
            self.sha = await redis.script_load(self.source)
        for attempt in range(2):
            async with redis.pipeline(transaction=False) as pipe:
                for key, args in calls:
                    pipe.execute_command("EVALSHA", self.sha, 1, key, *args)
                results: list[Any] = await pipe.execute(raise_on_error=False)
            if not attempt and any(isinstance(r, NoScriptError) for r in results):
                self.sha = await redis.script_load(self.source)
                continue
            break
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results


def consumer_name() -> str:
    """Unique per process: a restarted replica never inherits a dead one's entries by name."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(slots=True)
class Entry:
    """One stream entry; `row` is None for poison, with `reason` saying why."""

    shard: int
    entry_id: bytes
    raw: bytes | None
    row: Row | None
    reason: str = ""


def parse(shard: int, entry_id: bytes, fields: dict[bytes, bytes] | None) -> Entry:
    raw = (fields or {}).get(RECORD_FIELD)
    if raw is None:
        return Entry(shard, entry_id, None, None, "entry has no record field")
    try:
        record = usage_pb2.UsageRecord.FromString(raw)
    except DecodeError:
        return Entry(shard, entry_id, raw, None, "not a serialized UsageRecord")
    try:
        return Entry(shard, entry_id, raw, row_of(record))
    except ValueError as exc:
        return Entry(shard, entry_id, raw, None, str(exc))


@dataclass(slots=True)
class Stats:
    """What this consumer did, for tests and logs (Prometheus has the same, process-wide)."""

    written: int = 0
    duplicates: int = 0
    redeliveries: int = 0
    poison: int = 0
    write_errors: int = 0
    lag: int = 0
    forgotten: list[str] = field(default_factory=list)


class _Throttled:
    """Log a lasting failure once when it starts and then every _LOG_EVERY_S."""

    def __init__(self) -> None:
        self._logged: float | None = None  # None: not failing

    def failed(self) -> bool:
        """Note a failure; True when it should be logged."""
        now = time.monotonic()
        if self._logged is None or now - self._logged >= _LOG_EVERY_S:
            self._logged = now
            return True
        return False

    def recovered(self) -> bool:
        """Note a success; True when it ends a failure."""
        ended, self._logged = self._logged is not None, None
        return ended


# How long a stopping replica keeps writing what is already buffered.
DRAIN_S = 5.0


class Consumer:
    """One ledger replica's reader of every shard's stream."""

    def __init__(
        self,
        redis: Client,
        store: Store,
        *,
        shards: int,
        batch_size: int,
        claim_idle_ms: int,
        name: str | None = None,
        idle_poll_s: float = 0.25,
        max_backoff_s: float = 5.0,
        forget_idle_ms: int = 3_600_000,
    ) -> None:
        self.name = name or consumer_name()
        self.stats = Stats()
        self._redis = redis
        self._store = store
        self._shards = shards
        self._batch_size = batch_size
        self._claim_idle_ms = claim_idle_ms
        self._claim_every_s = max(0.05, min(claim_idle_ms / 2, 10_000) / 1000)
        self._idle_poll_s = idle_poll_s
        self._max_backoff_s = max_backoff_s
        self._forget_idle_ms = forget_idle_ms
        self._ack_script = _Script(_ACK_DELETE)
        self._forget_script = _Script(_FORGET)
        self._claim_cursor: dict[int, bytes] = {}
        self._stopping = asyncio.Event()
        self._redis_failing = _Throttled()
        self._db_failing = _Throttled()

    def stop(self) -> None:
        """Finish the batch in hand if the database takes it, then return from run()."""
        self._stopping.set()

    async def run(self) -> None:
        """Until stop(): claim, read, write, acknowledge; Redis and database outages are waited out.

        Upkeep (the lag gauge, partitions, idle consumers) runs beside it, so the
        lag is still measured while a write waits for the database.
        """
        upkeep = asyncio.create_task(self._upkeep(), name="ledger-upkeep")
        try:
            await self._pump()
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep

    async def _pump(self) -> None:
        next_claim = 0.0
        backoff = 0.1
        joined = False
        while not self._stopping.is_set():
            now = time.monotonic()
            try:
                if not joined:
                    await self.ensure_groups()
                    joined = True
                entries: list[Entry] = []
                if now >= next_claim:
                    next_claim = now + self._claim_every_s
                    entries = await self._claim()
                if not entries:
                    entries = await self._read()
            except (RedisError, OSError) as exc:
                if self._redis_failing.failed():
                    log.error("redis unavailable", extra={"error": _describe(exc)})
                await self._pause(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            backoff = 0.1
            if self._redis_failing.recovered():
                log.info("redis available again")
            if not entries:
                await self._pause(self._idle_poll_s)
                continue
            for start in range(0, len(entries), self._batch_size):
                chunk = entries[start : start + self._batch_size]
                if not await self._write(chunk):
                    return  # stopping while the database is down: the entries stay pending
                await self._acknowledge(chunk)
            if len(entries) < self._batch_size:
                # Caught up: let records gather for a moment, so that a busy mesh is
                # written in batches (one read, insert and ack per poll), not one by one.
                await self._pause(self._idle_poll_s)
        await self._drain()

    async def _drain(self) -> None:
        """On stop, write what is already buffered (quota's last records), for a few seconds."""
        deadline = time.monotonic() + DRAIN_S
        with contextlib.suppress(RedisError, OSError):
            while time.monotonic() < deadline and (entries := await self._read()):
                if not await self._write(entries[: self._batch_size]):
                    return
                await self._acknowledge(entries[: self._batch_size])

    # -- reading --------------------------------------------------------------

    async def _read(self) -> list[Entry]:
        """New entries of every shard, in one pipelined round trip."""
        replies = await self._each_shard(
            lambda pipe, shard: pipe.xreadgroup(
                LEDGER_GROUP, self.name, {usage_stream(shard): ">"}, count=self._batch_size
            )
        )
        entries: list[Entry] = []
        for shard, reply in replies:
            for _stream, messages in reply or ():
                entries += [parse(shard, entry_id, fields) for entry_id, fields in messages]
        return entries

    async def _claim(self) -> list[Entry]:
        """Entries another replica read and left unconfirmed for longer than claim_idle_ms."""
        replies = await self._each_shard(
            lambda pipe, shard: pipe.xautoclaim(
                usage_stream(shard),
                LEDGER_GROUP,
                self.name,
                self._claim_idle_ms,
                start_id=self._claim_cursor.get(shard, b"0-0"),
                count=self._batch_size,
            )
        )
        entries: list[Entry] = []
        for shard, reply in replies:
            cursor, messages = reply[0], reply[1]
            self._claim_cursor[shard] = cursor
            for entry_id, fields in messages:
                # Redis 6.2 answers a pending entry that was deleted with nil (Redis 7
                # drops it from the group itself); ours are acknowledged as they are
                # deleted (one script), so only an XDEL from outside leaves one.
                if entry_id is not None:
                    entries.append(parse(shard, entry_id, fields))
        claimed = len(entries)
        if claimed:
            self.stats.redeliveries += claimed
            REDELIVERIES.inc(claimed)
            log.info("claimed unconfirmed records", extra={"records": claimed})
        return entries

    async def _each_shard(
        self, command: Callable[[Pipeline | ClusterPipeline, int], object]
    ) -> list[tuple[int, Any]]:
        """One command per shard's stream, all in one round trip: (shard, reply) pairs.

        A shard whose stream is gone (a Redis restarted without persistence) joins
        the group again and is left out this time; any other error raises.
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in range(self._shards):
                command(pipe, shard)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        answered = []
        for shard, reply in enumerate(replies):
            if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
                await self._create_group(shard)
                continue
            if isinstance(reply, Exception):
                raise reply
            answered.append((shard, reply))
        return answered

    async def ensure_groups(self) -> None:
        """Join the group on every shard's stream, creating streams and group as needed."""
        for shard in range(self._shards):
            await self._create_group(shard)

    async def _create_group(self, shard: int) -> None:
        try:
            await self._redis.xgroup_create(
                usage_stream(shard), LEDGER_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- writing --------------------------------------------------------------

    async def _write(self, chunk: Sequence[Entry]) -> bool:
        """Commit the chunk's records; False if asked to stop before the database took them."""
        for entry in chunk:
            if entry.row is None:
                self._poison(entry)
        rows = [entry.row for entry in chunk if entry.row is not None]
        if not rows:
            return True
        try:
            new = await self._insert(rows)
        except Rejected as exc:
            log.warning("batch refused by the database; writing it record by record",
                        extra={"records": len(rows), "error": str(exc)})  # fmt: skip
            new = []
            for entry in chunk:
                if entry.row is None:
                    continue
                try:
                    one = await self._insert([entry.row])
                except Rejected as refused:
                    entry.reason = str(refused)
                    entry.row = None
                    self._poison(entry)
                    continue
                if one is None:
                    return False
                new += one
        if new is None:
            return False
        self._count(new, len(rows) - len(new))
        return True

    async def _insert(self, rows: Sequence[Row]) -> list[Row] | None:
        """Insert, retrying transient failures with capped backoff until it commits.

        Returns None if asked to stop first (nothing is acknowledged then); raises
        Rejected when the database refuses the data itself.
        """
        backoff = 0.1
        while True:
            try:
                new = await self._store.insert(rows)
            except _TRANSIENT as exc:
                self.stats.write_errors += 1
                WRITE_ERRORS.inc()
                if self._db_failing.failed():
                    log.error("database write failed; the batch is kept and retried",
                              extra={"records": len(rows), "error": _describe(exc)})  # fmt: skip
                if self._stopping.is_set():
                    return None
                await self._pause(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            if self._db_failing.recovered():
                log.info("database writes resumed", extra={"records": len(rows)})
            return new

    def _poison(self, entry: Entry) -> None:
        self.stats.poison += 1
        POISON.inc()
        raw = base64.b64encode(entry.raw).decode() if entry.raw is not None else ""
        log.error(
            "skipping an entry that is not a storable usage record",
            extra={
                "stream": usage_stream(entry.shard),
                "entry_id": entry.entry_id.decode(),
                "reason": entry.reason,
                "record_b64": raw,
            },
        )

    def _count(self, new: Sequence[Row], duplicates: int) -> None:
        self.stats.written += len(new)
        self.stats.duplicates += duplicates
        RECORDS_WRITTEN.inc(len(new))
        if duplicates:
            DUPLICATES.inc(duplicates)
        spend: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for row in new:
            totals = spend[(row.model, row.tenant)]
            totals[0] += row.cost_pico_usd
            totals[1] += row.prompt_tokens
            totals[2] += row.completion_tokens
            totals[3] += row.cached_tokens
        for (model, tenant), (pico, prompt, completion, cached) in spend.items():
            SPEND.labels(model, tenant).inc(float(Decimal(pico).scaleb(-12)))
            TOKENS.labels(model, tenant, "input").inc(prompt)
            TOKENS.labels(model, tenant, "output").inc(completion)
            TOKENS.labels(model, tenant, "cached_input").inc(cached)

    async def _acknowledge(self, chunk: Sequence[Entry]) -> None:
        """XACK + XDEL the chunk's entries, shard by shard, in one round trip.

        Retried while Redis is down; if we stop first, the entries are claimed
        later and their records conflict (counted as duplicates, not twice).
        """
        by_shard: dict[int, list[bytes]] = defaultdict(list)
        for entry in chunk:
            by_shard[entry.shard].append(entry.entry_id)
        backoff = 0.1
        while True:
            try:
                await self._ack_delete(by_shard)
                return
            except (RedisError, OSError) as exc:
                if self._redis_failing.failed():
                    log.error("cannot acknowledge written records; retrying",
                              extra={"error": _describe(exc)})  # fmt: skip
                if self._stopping.is_set():
                    return
                await self._pause(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)

    async def _ack_delete(self, by_shard: dict[int, list[bytes]]) -> None:
        calls = [(usage_stream(shard), [LEDGER_GROUP, *ids]) for shard, ids in by_shard.items()]
        await self._ack_script.run(self._redis, calls)

    # -- upkeep ---------------------------------------------------------------

    async def _upkeep(self) -> None:
        next_forget = 0.0
        while not self._stopping.is_set():
            try:
                await self._measure_lag()
                if time.monotonic() >= next_forget:
                    next_forget = time.monotonic() + _FORGET_EVERY_S
                    await self._forget_dead_consumers()
            except (RedisError, OSError):
                pass  # the pump reports Redis's state
            now = datetime.now(UTC)
            with contextlib.suppress(*_TRANSIENT):  # the next write reports the database's
                await self._store.ensure_partitions([now, now + timedelta(days=31)])
            await self._pause(_MAINTAIN_S)

    async def _measure_lag(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in range(self._shards):
                pipe.xlen(usage_stream(shard))
            lengths: list[int] = await pipe.execute()
        self.stats.lag = sum(lengths)
        LAG.set(self.stats.lag)

    async def _forget_dead_consumers(self) -> None:
        """Remove consumers that hold nothing and have not read for forget_idle_ms.

        One that holds entries is left alone: its entries are claimed first. A live
        consumer removed after a long quiet spell is recreated by its next read.
        """
        args = [LEDGER_GROUP, self.name, self._forget_idle_ms]
        calls = [(usage_stream(shard), args) for shard in range(self._shards)]
        for shard, names in enumerate(await self._forget_script.run(self._redis, calls)):
            for raw in names:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                self.stats.forgotten.append(name)
                log.info(
                    "removed an idle consumer",
                    extra={"consumer": name, "stream": usage_stream(shard)},
                )

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
