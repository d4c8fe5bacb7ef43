"""The ledger's schema, versioned in code and applied on start.

Each migration runs once, in order, inside one transaction that first takes a
transaction-scoped advisory lock: N replicas starting at once queue on the
lock, and each one after the first finds the versions already recorded in
`schema_migrations` and does nothing. A migration is never edited once
released; a change is a new version.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

log = logging.getLogger("meshgate.ledger")

# pg_advisory_xact_lock key for schema changes: crc32("meshgate.ledger.migrations").
MIGRATION_LOCK = 0x2F61D6E3


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


_V1 = """
-- One row per admitted request (a lease), partitioned by UTC month of its start.
-- A partitioned table's unique key must include the partition key; started_at never
-- changes for a record, so a redelivered record conflicts on (id, started_at).
CREATE TABLE usage_records (
    id                 text        NOT NULL,
    request_id         text        NOT NULL,
    started_at         timestamptz NOT NULL,
    ended_at           timestamptz NOT NULL,
    key_id             text        NOT NULL,
    tenant             text        NOT NULL,
    model              text        NOT NULL,
    endpoint           text        NOT NULL,   -- chat.completions | completions | embeddings
    stream             boolean     NOT NULL,
    outcome            text        NOT NULL,   -- completed | failed | cancelled | expired
    status             integer     NOT NULL,
    error_code         text        NOT NULL,
    prompt_tokens      bigint      NOT NULL,
    completion_tokens  bigint      NOT NULL,
    cached_tokens      bigint      NOT NULL,
    cost_pico_usd      bigint      NOT NULL,   -- 1e-12 USD, exact
    reserved_tokens    bigint      NOT NULL,
    reserved_micro_usd bigint      NOT NULL,
    replica            text        NOT NULL,
    latency_us         bigint      NOT NULL,
    ttft_us            bigint      NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, started_at)
) PARTITION BY RANGE (started_at);

-- The reports: one principal over a time range, newest first with (started_at, id)
-- as the keyset, and a lookup by the request id the client saw.
CREATE INDEX usage_records_key_started ON usage_records (key_id, started_at, id);
CREATE INDEX usage_records_tenant_started ON usage_records (tenant, started_at, id);
CREATE INDEX usage_records_model_started ON usage_records (model, started_at, id);
CREATE INDEX usage_records_started ON usage_records (started_at, id);
CREATE INDEX usage_records_request_id ON usage_records (request_id);

-- Totals per UTC hour, kept by the same statement that inserts the records, from the
-- rows it actually inserted: a record counts once here exactly when it exists above.
CREATE TABLE usage_hourly (
    hour              timestamptz NOT NULL,
    key_id            text        NOT NULL,
    tenant            text        NOT NULL,
    model             text        NOT NULL,
    requests          bigint      NOT NULL,
    prompt_tokens     bigint      NOT NULL,
    completion_tokens bigint      NOT NULL,
    cached_tokens     bigint      NOT NULL,
    cost_pico_usd     numeric     NOT NULL,
    errors            bigint      NOT NULL,   -- failed, cancelled or expired
    PRIMARY KEY (hour, key_id, tenant, model)
);
CREATE INDEX usage_hourly_key ON usage_hourly (key_id, hour);
CREATE INDEX usage_hourly_tenant ON usage_hourly (tenant, hour);
CREATE INDEX usage_hourly_model ON usage_hourly (model, hour);
"""

_V2 = """
-- The admin API's audit log: one row per change an admin made, never updated or deleted.
-- `seq` orders the rows (and pages them) in the order they were recorded.
CREATE TABLE audit_events (
    seq          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           text        NOT NULL UNIQUE,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    actor_key_id text        NOT NULL,
    actor_name   text        NOT NULL,
    source       text        NOT NULL,   -- the client's address as the admin listener saw it
    action       text        NOT NULL,   -- key.create, key.revoke, tenant.update, ...
    target       text        NOT NULL,   -- a key id or a tenant id
    details      jsonb       NOT NULL,   -- the change; never a secret
    request_id   text        NOT NULL
);
CREATE INDEX audit_events_target ON audit_events (target, seq);
CREATE INDEX audit_events_actor ON audit_events (actor_key_id, seq);
"""

_V3 = """
-- The model the client asked for, when a fallback served instead (`model` is the one
-- that served and is billed); '' when they are the same. Old rows read as ''.
ALTER TABLE usage_records ADD COLUMN requested_model text NOT NULL DEFAULT '';
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "usage_records by month, usage_hourly rollup", _V1),
    Migration(2, "audit_events for the admin API", _V2),
    Migration(3, "usage_records.requested_model, for model fallbacks", _V3),
)

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(conn: Any, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply the migrations this database lacks, in order; return the versions applied.

    `conn` is an asyncpg connection. Everything, the bookkeeping table included,
    happens under the lock, so concurrent starts are serialized, not raced.
    """
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(_BOOKKEEPING)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations:
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
    newer = sorted(done - {m.version for m in migrations})
    if newer:
        # A newer release migrated this database (a rolling upgrade): keep running, say so.
        log.warning(
            "database has schema versions this release does not know", extra={"versions": newer}
        )
    for version in applied:
        log.info("schema migrated", extra={"version": version})
    return applied
