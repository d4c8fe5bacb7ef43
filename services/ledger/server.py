"""The ledger service: writes the usage streams to PostgreSQL and answers `UsageService`.

On start it migrates the schema (safe with N replicas starting at once), then
runs the stream consumer (consumer.py) beside the gRPC server. Writing is
never on a request's path: quota only appends to Redis, and this process
catches up, however long the database was away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Sequence
from decimal import Decimal
from urllib.parse import urlsplit

import asyncpg
import grpc

from meshgate import grpcio, redis_client
from meshgate.config import Config
from meshgate.grpcio import Context
from meshgate.v1 import audit_pb2, audit_pb2_grpc, ledger_pb2, ledger_pb2_grpc
from services.ledger.audit import AuditLog, AuditService
from services.ledger.consumer import Consumer
from services.ledger.store import (
    Bucket,
    Dimension,
    Filter,
    Store,
    Totals,
    to_datetime,
    to_unix_us,
)

log = logging.getLogger("meshgate.ledger")

_DIMENSIONS: dict[int, Dimension] = {
    ledger_pb2.DIMENSION_KEY: "key_id",
    ledger_pb2.DIMENSION_TENANT: "tenant",
    ledger_pb2.DIMENSION_MODEL: "model",
}
_NAMES: dict[Dimension, str] = {
    "key_id": "DIMENSION_KEY",
    "tenant": "DIMENSION_TENANT",
    "model": "DIMENSION_MODEL",
}
_BUCKETS: dict[int, Bucket | None] = {
    ledger_pb2.BUCKET_UNSPECIFIED: None,
    ledger_pb2.BUCKET_HOUR: "hour",
    ledger_pb2.BUCKET_DAY: "day",
}
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# How long a starting replica waits for its database before giving up (the
# orchestrator restarts it); `meshgate up` waits 30 s for every service.
CONNECT_WINDOW_S = 20.0
# The consumer's Redis deadline, at least (redis.timeout_ms is a request's).
REDIS_TIMEOUT_MS = 5000
# Failures worth waiting out at start; any other one (a wrong password, no such
# database) is reported at once.
_STARTING = (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)
_UNAVAILABLE = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class BadRequest(Exception):
    """An argument the caller must fix; the message says which and how."""


def usd(pico: int) -> str:
    """Exact dollars from pico-dollars, always with 12 decimal places."""
    return f"{Decimal(pico).scaleb(-12):f}"


def usage_filter(message: ledger_pb2.UsageFilter) -> Filter:
    for name in ("since_unix_us", "until_unix_us"):
        if getattr(message, name) < 0:
            raise BadRequest(f"filter.{name} must be 0 (no bound) or a time after 1970")
    since, until = message.since_unix_us, message.until_unix_us
    if since and until and until <= since:
        raise BadRequest("filter.until_unix_us must be later than filter.since_unix_us")
    try:
        return Filter(
            key_id=message.key_id,
            tenant=message.tenant,
            model=message.model,
            since=to_datetime(since) if since else None,
            until=to_datetime(until) if until else None,
        )
    except OverflowError:
        raise BadRequest("filter: a time bound is beyond the year 9999") from None


def dimensions(values: Sequence[int]) -> list[Dimension]:
    found: list[Dimension] = []
    for index, value in enumerate(values):
        dimension = _DIMENSIONS.get(value)
        if dimension is None:
            raise BadRequest(
                f"group_by[{index}]: {value} is not a dimension; use DIMENSION_KEY, "
                "DIMENSION_TENANT or DIMENSION_MODEL"
            )
        if dimension in found:
            raise BadRequest(f"group_by[{index}]: {_NAMES[dimension]} is listed twice")
        found.append(dimension)
    return found


def _row(totals: Totals) -> ledger_pb2.UsageSummaryRow:
    return ledger_pb2.UsageSummaryRow(
        key_id=totals.key_id,
        tenant=totals.tenant,
        model=totals.model,
        bucket_start_unix_us=0 if totals.bucket_start is None else to_unix_us(totals.bucket_start),
        requests=totals.requests,
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        cached_tokens=totals.cached_tokens,
        cost_usd=usd(totals.cost_pico_usd),
        errors=totals.errors,
    )


class UsageService(ledger_pb2_grpc.UsageServiceServicer):
    def __init__(self, store: Store) -> None:
        self._store = store

    async def SummarizeUsage(
        self, request: ledger_pb2.SummarizeUsageRequest, context: Context
    ) -> ledger_pb2.SummarizeUsageResponse:
        try:
            flt = usage_filter(request.filter)
            group_by = dimensions(request.group_by)
            if request.bucket not in _BUCKETS:
                raise BadRequest(
                    f"bucket: {request.bucket} is not a bucket; use BUCKET_HOUR, BUCKET_DAY "
                    "or leave it unset"
                )
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            totals = await self._store.summarize(flt, group_by, _BUCKETS[request.bucket])
        except _UNAVAILABLE as exc:
            await _database_down(context, exc)
        return ledger_pb2.SummarizeUsageResponse(rows=[_row(t) for t in totals])

    async def ListUsageRecords(
        self, request: ledger_pb2.ListUsageRecordsRequest, context: Context
    ) -> ledger_pb2.ListUsageRecordsResponse:
        try:
            flt = usage_filter(request.filter)
            if request.page_size < 0:
                raise BadRequest("page_size must be 0 (the default, 100) or more")
            size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            records, token = await self._store.list_records(flt, size, request.page_token)
        except (BadRequest, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except _UNAVAILABLE as exc:
            await _database_down(context, exc)
        return ledger_pb2.ListUsageRecordsResponse(records=records, next_page_token=token)


async def _database_down(context: Context, exc: BaseException) -> None:
    log.warning("usage query failed", extra={"error": type(exc).__name__})
    await context.abort(
        grpc.StatusCode.UNAVAILABLE, "the ledger's database is unavailable; retry shortly"
    )


def _where(dsn: str) -> str:
    """host:port/db of a database URL, never its password."""
    try:
        parts = urlsplit(dsn)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"
    except ValueError:
        return "the configured URL"


async def open_store(dsn: str, window_s: float = CONNECT_WINDOW_S) -> Store:
    """Connect and migrate, waiting out a database that is still starting."""
    deadline = time.monotonic() + window_s
    while True:
        try:
            store = await Store.open(dsn)
            try:
                await store.migrate()
            except BaseException:
                await store.close()
                raise
            return store
        except _STARTING as exc:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"meshgate ledger: cannot reach the database at {_where(dsn)} "
                    f"within {window_s:.0f}s ({type(exc).__name__})"
                ) from None
            await asyncio.sleep(0.5)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise SystemExit(
                f"meshgate ledger: the database at {_where(dsn)} refused us: {exc}"
            ) from None


async def run(config: Config) -> None:
    ledger = config.ledger
    if not ledger.database_url:
        raise SystemExit(
            "meshgate ledger: ledger.database_url is empty (set MESHGATE_LEDGER__DATABASE_URL, "
            "or run `meshgate up`, which starts an embedded PostgreSQL)"
        )
    if not config.redis.configured:
        raise SystemExit("meshgate ledger: redis.url is empty (set REDIS_URL or run `meshgate up`)")
    store = await open_store(ledger.database_url)
    # Off the request path, a slow answer is worth waiting for: a read that times out
    # after Redis delivered it leaves entries pending until they are claimed.
    timeout_ms = max(config.redis.timeout_ms, REDIS_TIMEOUT_MS)
    redis = await redis_client.open_client(
        config.redis.model_copy(update={"timeout_ms": timeout_ms}), wait=True
    )
    consumer = Consumer(
        redis,
        store,
        shards=config.quota.shards,
        batch_size=ledger.batch_size,
        claim_idle_ms=ledger.claim_idle_ms,
    )
    task = asyncio.create_task(consumer.run(), name="ledger-consumer")
    task.add_done_callback(_stop_if_crashed)
    service = UsageService(store)
    audit = AuditService(AuditLog(store.pool), _UNAVAILABLE)

    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        ledger_pb2_grpc.add_UsageServiceServicer_to_server(service, server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(audit, server)
        return [
            ledger_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
            audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
        ]

    try:
        await grpcio.serve("ledger", config.services.ledger, setup, tls=config.tls)
    finally:
        consumer.stop()
        done, _ = await asyncio.wait([task], timeout=15)
        if not done:
            task.cancel()  # stuck on a dead database: its entries are claimed by another replica
        await store.close()
        await redis.aclose()
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise SystemExit(f"meshgate ledger: the stream consumer stopped: {task.exception()!r}")


def _stop_if_crashed(task: asyncio.Task[None]) -> None:
    """A consumer that died of a bug must not leave a healthy-looking server behind."""
    if task.cancelled() or task.exception() is None:
        return
    log.critical("stream consumer crashed", exc_info=task.exception())
    os.kill(os.getpid(), signal.SIGTERM)
