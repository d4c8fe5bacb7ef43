"""The ledger's PostgreSQL store: idempotent batch inserts, summaries and record pages.

A batch is one statement: it inserts the records (a redelivered one conflicts
on its key and is skipped) and adds only the rows it actually inserted to the
hourly rollup, so nothing counts twice in either table. Summaries read the
rollup for the whole hours of a range and the raw records for its ragged
edges, so `--since 24h` is as exact as a query over raw records and as cheap
as one over the rollup. Money stays integral (pico-dollars) end to end.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

import asyncpg

from meshgate.v1 import usage_pb2
from services.ledger.migrations import migrate

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# pg_advisory_xact_lock key for creating partitions: crc32("meshgate.ledger.partitions").
PARTITION_LOCK = 0x5B0C4E19

ENDPOINTS: dict[int, str] = {
    usage_pb2.ENDPOINT_CHAT_COMPLETIONS: "chat.completions",
    usage_pb2.ENDPOINT_COMPLETIONS: "completions",
    usage_pb2.ENDPOINT_EMBEDDINGS: "embeddings",
    usage_pb2.ENDPOINT_RESPONSES: "responses",
}
OUTCOMES: dict[int, str] = {
    usage_pb2.OUTCOME_COMPLETED: "completed",
    usage_pb2.OUTCOME_FAILED: "failed",
    usage_pb2.OUTCOME_CANCELLED: "cancelled",
    usage_pb2.OUTCOME_EXPIRED: "expired",
}
_ENDPOINT_VALUES = {name: value for value, name in ENDPOINTS.items()}
_OUTCOME_VALUES = {name: value for value, name in OUTCOMES.items()}

Dimension = Literal["key_id", "tenant", "model"]
DIMENSIONS: tuple[Dimension, ...] = ("key_id", "tenant", "model")
Bucket = Literal["hour", "day"]


class Rejected(Exception):
    """The database refused the data itself (not a transient failure): retrying cannot help."""


def to_datetime(unix_us: int) -> datetime:
    """Exact: integer microseconds, never through a float. OverflowError out of range."""
    return EPOCH + unix_us * _US


def to_unix_us(moment: datetime) -> int:
    return (moment - EPOCH) // _US


class Row(NamedTuple):
    """One usage_records row, in column order (so `zip(*rows)` gives the insert's arrays)."""

    id: str
    request_id: str
    started_at: datetime
    ended_at: datetime
    key_id: str
    tenant: str
    model: str
    endpoint: str
    stream: bool
    outcome: str
    status: int
    error_code: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_pico_usd: int
    reserved_tokens: int
    reserved_micro_usd: int
    replica: str
    latency_us: int
    ttft_us: int
    requested_model: str


COLUMNS = ", ".join(Row._fields)
_TYPES = (
    "text", "text", "timestamptz", "timestamptz", "text", "text", "text", "text", "bool",
    "text", "int4", "text", "int8", "int8", "int8", "int8", "int8", "int8", "text", "int8", "int8",
    "text",
)  # fmt: skip


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; a record must not be refused for one.
    return value.replace("\x00", "\ufffd")


def _enum_name(names: dict[int, str], value: int) -> str:
    return names.get(value) or ("unspecified" if value == 0 else f"unknown-{value}")


def row_of(record: usage_pb2.UsageRecord) -> Row:
    """The row for a record; ValueError for one that can never be stored (no id, bad times)."""
    if not record.id:
        raise ValueError("record has no id")
    try:
        started, ended = to_datetime(record.started_unix_us), to_datetime(record.ended_unix_us)
    except OverflowError:
        raise ValueError("record times are out of range") from None
    return Row(
        _text(record.id), _text(record.request_id), started, ended, _text(record.key_id),
        _text(record.tenant), _text(record.model), _enum_name(ENDPOINTS, record.endpoint),
        record.stream, _enum_name(OUTCOMES, record.outcome), record.status,
        _text(record.error_code), record.prompt_tokens, record.completion_tokens,
        record.cached_tokens, record.cost_pico_usd, record.reserved_tokens,
        record.reserved_micro_usd, _text(record.replica), record.latency_us, record.ttft_us,
        _text(record.requested_model),
    )  # fmt: skip


def record_of(row: Any) -> usage_pb2.UsageRecord:
    """A stored row back on the wire."""
    return usage_pb2.UsageRecord(
        id=row["id"],
        request_id=row["request_id"],
        started_unix_us=to_unix_us(row["started_at"]),
        ended_unix_us=to_unix_us(row["ended_at"]),
        key_id=row["key_id"],
        tenant=row["tenant"],
        model=row["model"],
        endpoint=_ENDPOINT_VALUES.get(row["endpoint"], usage_pb2.ENDPOINT_UNSPECIFIED),  # type: ignore[arg-type]
        stream=row["stream"],
        outcome=_OUTCOME_VALUES.get(row["outcome"], usage_pb2.OUTCOME_UNSPECIFIED),  # type: ignore[arg-type]
        status=row["status"],
        error_code=row["error_code"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        cached_tokens=row["cached_tokens"],
        cost_pico_usd=row["cost_pico_usd"],
        reserved_tokens=row["reserved_tokens"],
        reserved_micro_usd=row["reserved_micro_usd"],
        replica=row["replica"],
        latency_us=row["latency_us"],
        ttft_us=row["ttft_us"],
        requested_model=row["requested_model"],
    )


def _hour(column: str) -> str:
    return f"date_trunc('hour', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"


# One round trip per batch. ORDER BY fixes the order in which rows (and rollup rows) are
# locked, so two replicas writing overlapping batches cannot deadlock on each other.
_INSERT = f"""
WITH ins AS (
    INSERT INTO usage_records ({COLUMNS})
    SELECT * FROM unnest({", ".join(f"${i}::{t}[]" for i, t in enumerate(_TYPES, 1))})
    ORDER BY 1
    ON CONFLICT DO NOTHING
    RETURNING id, started_at, key_id, tenant, model, outcome,
              prompt_tokens, completion_tokens, cached_tokens, cost_pico_usd
), hourly AS (
    INSERT INTO usage_hourly AS h (hour, key_id, tenant, model, requests, prompt_tokens,
                                   completion_tokens, cached_tokens, cost_pico_usd, errors)
    SELECT {_hour("started_at")}, key_id, tenant, model, count(*), sum(prompt_tokens),
           sum(completion_tokens), sum(cached_tokens), sum(cost_pico_usd),
           count(*) FILTER (WHERE outcome <> 'completed')
    FROM ins
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (hour, key_id, tenant, model) DO UPDATE SET
        requests = h.requests + EXCLUDED.requests,
        prompt_tokens = h.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = h.completion_tokens + EXCLUDED.completion_tokens,
        cached_tokens = h.cached_tokens + EXCLUDED.cached_tokens,
        cost_pico_usd = h.cost_pico_usd + EXCLUDED.cost_pico_usd,
        errors = h.errors + EXCLUDED.errors
)
SELECT id FROM ins
"""


@dataclass(frozen=True, slots=True)
class Filter:
    """Which records a query covers; empty strings and None select everything."""

    key_id: str = ""
    tenant: str = ""
    model: str = ""
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Totals:
    """One summary row: a group (the dimensions not grouped by are empty) in one bucket."""

    bucket_start: datetime | None
    key_id: str
    tenant: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_pico_usd: int
    errors: int


class _Params:
    """Numbered placeholders for a query built from parts."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _where(flt: Filter, params: _Params) -> list[str]:
    return [
        f"{column} = {params(value)}"
        for column, value in (("key_id", flt.key_id), ("tenant", flt.tenant), ("model", flt.model))
        if value
    ]


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: datetime) -> datetime:
    floor = _floor_hour(moment)
    return floor if floor == moment else floor + timedelta(hours=1)


def _month(moment: datetime) -> tuple[int, int]:
    utc = moment.astimezone(UTC)
    return utc.year, utc.month


def _partition_ddl(year: int, month: int) -> str:
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    start, end = (f"{y:04d}-{m:02d}-01 00:00:00+00" for y, m in ((year, month), following))
    return (
        f"CREATE TABLE IF NOT EXISTS usage_records_y{year:04d}m{month:02d} PARTITION OF "
        f"usage_records FOR VALUES FROM ('{start}') TO ('{end}')"
    )


def encode_page_token(started: datetime, ident: str) -> str:
    raw = f"{to_unix_us(started)}:{ident}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, str]:
    """ValueError for a token this store did not issue."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        started, ident = raw.split(":", 1)
        return to_datetime(int(started)), ident
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise ValueError("page_token is not one this ledger issued") from None


class Store:
    """The ledger's tables behind an asyncpg pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._partitions: set[tuple[int, int]] = set()

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 4) -> Store:
        """A pool whose sessions run in UTC (buckets and partitions are UTC).

        No idle floor: asyncpg would try to restore it in the background during an
        outage, logging a traceback each time; the first query connects instead.
        Raises what connecting raises, so a bad URL or password shows at start.
        """
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=max_size,
            timeout=5,
            command_timeout=30,
            server_settings={"timezone": "UTC", "application_name": "meshgate-ledger"},
        )
        try:
            async with pool.acquire() as conn:
                await conn.execute("SELECT 1")
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    @property
    def pool(self) -> Any:
        """The asyncpg pool, shared with the audit log (services/ledger/audit.py)."""
        return self._pool

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> list[int]:
        async with self._pool.acquire() as conn:
            return await migrate(conn)

    async def ensure_partitions(self, moments: Iterable[datetime]) -> None:
        """Create the monthly partitions these moments fall in, once per process.

        Under an advisory lock, because concurrent `CREATE TABLE IF NOT EXISTS` of
        one partition can still fail on the catalog's unique index.
        """
        missing = sorted({_month(moment) for moment in moments} - self._partitions)
        if not missing:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            for year, month in missing:
                await conn.execute(_partition_ddl(year, month))
        self._partitions.update(missing)

    async def insert(self, rows: Sequence[Row]) -> list[Row]:
        """Write a batch in one transaction; return the rows that were new.

        A row whose id is already stored (a redelivery) is skipped and not returned.
        Raises Rejected when the database refuses the data itself; any other error
        (the database is down, a deadlock, a timeout) means nothing was written.
        """
        unique = list({row.id: row for row in rows}.values())
        if not unique:
            return []
        await self.ensure_partitions(row.started_at for row in unique)
        try:
            ids = await self._insert(unique)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
            # A partition dropped behind our back also lands here: forget the cache, retry once.
            self._partitions.clear()
            await self.ensure_partitions(row.started_at for row in unique)
            try:
                ids = await self._insert(unique)
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                raise Rejected(f"{type(exc).__name__}: {exc}") from exc
        return [row for row in unique if row.id in ids]

    async def _insert(self, rows: Sequence[Row]) -> set[str]:
        async with self._pool.acquire() as conn:
            result = await conn.fetch(_INSERT, *zip(*rows, strict=True))
        return {record["id"] for record in result}

    async def summarize(
        self, flt: Filter, group_by: Sequence[Dimension] = (), bucket: Bucket | None = None
    ) -> list[Totals]:
        """Exact totals by the dimensions and bucket, ordered by bucket, then the groups.

        The whole hours of [since, until) come from usage_hourly and the partial
        hours at either end from usage_records; with no dimension and no bucket
        there is exactly one row (the grand total, zeros when nothing matched).
        """
        params = _Params()
        where = _where(flt, params)
        lo = _ceil_hour(flt.since) if flt.since else None
        hi = _floor_hour(flt.until) if flt.until else None
        parts: list[str] = []
        raw_ranges: list[tuple[datetime | None, datetime | None]] = []
        if lo is not None and hi is not None and lo >= hi:
            raw_ranges.append((flt.since, flt.until))  # no whole hour inside the range
        else:
            hourly = list(where)
            if lo is not None:
                hourly.append(f"hour >= {params(lo)}")
                if flt.since is not None and flt.since < lo:
                    raw_ranges.append((flt.since, lo))
            if hi is not None:
                hourly.append(f"hour < {params(hi)}")
                if flt.until is not None and hi < flt.until:
                    raw_ranges.append((hi, flt.until))
            parts.append(
                "SELECT hour AS t, key_id, tenant, model, requests, prompt_tokens, "
                "completion_tokens, cached_tokens, cost_pico_usd, errors FROM usage_hourly"
                + (" WHERE " + " AND ".join(hourly) if hourly else "")
            )
        for start, end in raw_ranges:
            raw = list(where)
            if start is not None:
                raw.append(f"started_at >= {params(start)}")
            if end is not None:
                raw.append(f"started_at < {params(end)}")
            parts.append(
                "SELECT started_at AS t, key_id, tenant, model, 1::bigint AS requests, "
                "prompt_tokens, completion_tokens, cached_tokens, "
                "cost_pico_usd::numeric AS cost_pico_usd, "
                "(outcome <> 'completed')::int::bigint AS errors FROM usage_records"
                + (" WHERE " + " AND ".join(raw) if raw else "")
            )
        dims = list(dict.fromkeys(group_by))
        keys = ([] if bucket is None else ["bucket"]) + dims
        bucket_sql = {
            None: "NULL::timestamptz",
            "hour": _hour("t"),
            "day": "date_trunc('day', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
        }[bucket]
        sql = (
            f"SELECT {bucket_sql} AS bucket"
            + "".join(f", {d}" for d in dims)
            + ", coalesce(sum(requests), 0) AS requests"
            + ", coalesce(sum(prompt_tokens), 0) AS prompt_tokens"
            + ", coalesce(sum(completion_tokens), 0) AS completion_tokens"
            + ", coalesce(sum(cached_tokens), 0) AS cached_tokens"
            + ", coalesce(sum(cost_pico_usd), 0) AS cost_pico_usd"
            + ", coalesce(sum(errors), 0) AS errors"
            + " FROM ("
            + " UNION ALL ".join(parts)
            + ") AS u"
            + (" GROUP BY " + ", ".join(keys) + " ORDER BY " + ", ".join(keys) if keys else "")
        )
        async with self._pool.acquire() as conn:
            result = await conn.fetch(sql, *params.values)
        return [
            Totals(
                bucket_start=row["bucket"],
                key_id=row["key_id"] if "key_id" in dims else "",
                tenant=row["tenant"] if "tenant" in dims else "",
                model=row["model"] if "model" in dims else "",
                requests=int(row["requests"]),
                prompt_tokens=int(row["prompt_tokens"]),
                completion_tokens=int(row["completion_tokens"]),
                cached_tokens=int(row["cached_tokens"]),
                cost_pico_usd=int(row["cost_pico_usd"]),
                errors=int(row["errors"]),
            )
            for row in result
        ]

    async def list_records(
        self, flt: Filter, page_size: int, page_token: str = ""
    ) -> tuple[list[usage_pb2.UsageRecord], str]:
        """One page, newest first; the token names the last row (keyset, not OFFSET).

        ValueError for a page token this store did not issue.
        """
        params = _Params()
        where = _where(flt, params)
        if flt.since is not None:
            where.append(f"started_at >= {params(flt.since)}")
        if flt.until is not None:
            where.append(f"started_at < {params(flt.until)}")
        if page_token:
            started, ident = decode_page_token(page_token)
            where.append(f"(started_at, id) < ({params(started)}, {params(ident)})")
        sql = (
            f"SELECT {COLUMNS} FROM usage_records"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY started_at DESC, id DESC LIMIT {params(page_size + 1)}"
        )
        async with self._pool.acquire() as conn:
            result = await conn.fetch(sql, *params.values)
        page = result[:page_size]
        token = ""
        if len(result) > page_size:
            token = encode_page_token(page[-1]["started_at"], page[-1]["id"])
        return [record_of(row) for row in page], token
