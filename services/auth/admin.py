"""`meshgate keys ...` and `meshgate tenants ...`: key and tenant management against Redis.

The secret is printed once, at creation, and never stored; listings show ids,
names, limits, and what is left of each dollar budget: the budget minus the
micro-dollars quota's counter holds for the current period (`meshgate/shards.py`).
Every change is published on `mg:key-events`, so running replicas see it at once.
Dollars are exact decimals throughout, never floats.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TextIO

from pydantic import ValidationError
from redis.exceptions import RedisError

from meshgate import redis_client
from meshgate.config import BudgetPeriod, Config, TenantConfig
from meshgate.pricing import micro_text, to_micro_usd
from meshgate.shards import key_prefix, period_id, shard_of, spent_usd_key, tenant_prefix
from meshgate.v1 import common_pb2
from services.auth.keys import (
    ROLE_NAMES,
    KeyRecord,
    LimitsChange,
    RedisKeyStore,
    TenantRecord,
    config_tenants,
    counts,
    period_name,
    policy_name,
    roles_of,
    usd_text,
)

Format = Literal["table", "json"]

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class AdminError(Exception):
    """A key- or tenant-management failure with a message fit for the terminal."""


def parse_expires(text: str, now: float | None = None) -> float:
    """`30d`, `12h`, `90m`, or an ISO date/time (UTC unless it says otherwise) -> unix seconds."""
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match:
        return now + int(match.group(1)) * _SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AdminError(
            f"--expires {text!r}: use a duration like 30d, 12h or 90m, or an ISO date like 2027-01-31"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    expires = moment.timestamp()
    if expires <= now:
        raise AdminError(f"--expires {text!r} is in the past")
    return expires


@asynccontextmanager
async def _key_store(config: Config) -> AsyncIterator[RedisKeyStore]:
    """The Redis key store for one command: Redis failures become one clear AdminError."""
    if not config.redis.configured:
        raise AdminError(
            "no local `meshgate up` is running, and no key store is named: start `meshgate up`, "
            "give a mesh's admin API with --url, or set REDIS_URL (or redis.url in the config)"
        )
    # An operator at a terminal can wait longer than a request can.
    settings = config.redis.model_copy(update={"timeout_ms": config.redis.timeout_ms * 4})
    try:
        redis = await redis_client.open_client(settings)
    except (RedisError, OSError) as exc:
        raise AdminError(
            f"cannot reach Redis at the configured URL: {type(exc).__name__}"
        ) from None
    try:
        yield RedisKeyStore(redis)
    except (RedisError, OSError) as exc:
        raise AdminError(
            f"cannot reach Redis at the configured URL: {type(exc).__name__}"
        ) from None
    finally:
        await redis.aclose()


# ------------------------------------------------------------ rendering ----


def _when(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if timestamp else "-"
    )


def _status(record: KeyRecord, now: float) -> str:
    if record.revoked_at:
        return "revoked"
    if record.expires_at and now >= record.expires_at:
        return "expired"
    return "active"


def _write_table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def _write_json(items: list[dict[str, Any]], out: TextIO) -> None:
    out.write(json.dumps(items, indent=2) + "\n")


@dataclass(frozen=True, slots=True)
class Budget:
    """A dollar budget in the current period: its limit and what quota has counted against it."""

    limit_micro_usd: int
    period: BudgetPeriod
    spent_micro_usd: int

    @property
    def remaining_micro_usd(self) -> int | None:
        """None for no budget; never below 0 (a reservation in flight may reach the limit)."""
        if not self.limit_micro_usd:
            return None
        return max(self.limit_micro_usd - self.spent_micro_usd, 0)

    def fields(self) -> dict[str, Any]:
        """The same for JSON; remaining_usd is null without a budget."""
        remaining = self.remaining_micro_usd
        return {
            "budget_usd": micro_text(self.limit_micro_usd),
            "budget_period": self.period,
            "spent_usd": micro_text(self.spent_micro_usd),
            "remaining_usd": None if remaining is None else micro_text(remaining),
        }


async def _budgets(
    store: RedisKeyStore, limits: Sequence[common_pb2.Limits], prefixes: Sequence[str], now: float
) -> list[Budget]:
    """Each budget with its current period's counter, read in one round trip.

    The pipeline is not a transaction: each GET names one key, so it works on
    Redis Cluster too. A missing counter means nothing was spent yet.
    """
    periods = [period_name(lim) for lim in limits]
    async with store.redis.pipeline(transaction=False) as pipe:
        for prefix, period in zip(prefixes, periods, strict=True):
            pipe.get(spent_usd_key(prefix, period_id(period, now)))
        counters: list[bytes | None] = await pipe.execute()
    return [
        Budget(lim.budget_micro_usd, period, int(raw or 0))
        for lim, period, raw in zip(limits, periods, counters, strict=True)
    ]


def _iso(timestamp: float) -> str | None:
    return _when(timestamp) if timestamp else None


def _describe(change: LimitsChange) -> list[str]:
    """`rpm=200`, `budget_usd=5.00`: what a change sets, for the confirmation line."""
    parts = []
    for name, value in asdict(change).items():
        if value is not None:
            shown = usd_text(to_micro_usd(value)) if name == "budget_usd" else str(value)
            parts.append(f"{name}={shown}")
    return parts


# ----------------------------------------------------------------- keys ----


async def create(
    config: Config,
    *,
    name: str,
    tenant: str,
    rpm: int,
    tpm: int,
    max_concurrency: int,
    budget_tokens: int,
    budget_usd: Decimal = Decimal(0),
    budget_period: BudgetPeriod = "total",
    models: tuple[str, ...],
    expires: str | None,
    redis_failure_policy: Literal["fail_closed", "fail_open"],
    roles: Sequence[str] = ("api",),
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    out: TextIO = sys.stdout,
) -> None:
    expires_at = parse_expires(expires) if expires else 0.0
    async with _key_store(config) as store:
        if (
            tenant
            and tenant not in config_tenants(config.tenants)
            and not await store.tenant(tenant)
        ):
            raise AdminError(
                f"no tenant {tenant!r}: create it first with `meshgate tenants create --id {tenant}`"
            )
        secret, record = await store.create(
            name=name,
            tenant=tenant,
            rpm=rpm,
            tpm=tpm,
            max_concurrency=max_concurrency,
            budget_tokens=budget_tokens,
            budget_usd=budget_usd,
            budget_period=budget_period,
            models=models,
            expires_at=expires_at,
            redis_failure_policy=redis_failure_policy,
            roles=tuple(r for r in ("api", "admin") if r in roles),
            fallbacks=fallbacks,
        )
    out.write(f"{secret}\n")
    out.flush()
    sys.stderr.write(
        f"created {record.principal.key_id} ({name}); the key above is shown only once\n"
    )


async def update(
    config: Config,
    key_identifier: str,
    change: LimitsChange,
    *,
    models: tuple[str, ...] | None = None,
    expires: str | None = None,
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    out: TextIO = sys.stdout,
) -> None:
    """Change a key's limits in place: the secret stays, every replica sees it at once."""
    expires_at = None if expires is None else update_expiry(expires)
    if not change.fields() and models is None and expires_at is None and fallbacks is None:
        raise AdminError(
            "nothing to update: give at least one limit, --models, --fallbacks or --expires"
        )
    async with _key_store(config) as store:
        record = await store.update(
            key_identifier, change, models=models, expires_at=expires_at, fallbacks=fallbacks
        )
    if record is None:
        raise AdminError(f"no key with id {key_identifier!r} (see `meshgate keys list`)")
    out.write(
        f"updated {record.principal.key_id} ({record.principal.name}): "
        f"{describe(change, models, expires_at, fallbacks)}\n"
    )


def describe(
    change: LimitsChange,
    models: Sequence[str] | None = None,
    expires_at: float | None = None,
    fallbacks: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """`rpm=200 models=* expires=never`: what an update sets, for its confirmation line."""
    described = _describe(change)
    if models is not None:
        described.append(f"models={','.join(models) or '*'}")
    if fallbacks is not None:
        chains = ";".join(f"{m}={','.join(c)}" for m, c in sorted(fallbacks.items()))
        described.append(f"fallbacks={chains or 'catalog'}")
    if expires_at is not None:
        described.append(f"expires={_when(expires_at) if expires_at else 'never'}")
    return " ".join(described)


def update_expiry(text: str) -> float:
    """`never` lifts an expiry; anything else as `keys create --expires` takes it."""
    return 0.0 if text.strip().lower() == "never" else parse_expires(text)


async def list_keys(
    config: Config, fmt: Format = "table", out: TextIO = sys.stdout, now: float | None = None
) -> None:
    now = time.time() if now is None else now
    shards = config.quota.shards
    async with _key_store(config) as store:
        records = await store.list()
        budgets = await _budgets(
            store,
            [r.principal.limits for r in records],
            [
                key_prefix(
                    shard_of(r.principal.tenant, r.principal.key_id, shards), r.principal.key_id
                )
                for r in records
            ],
            now,
        )
    write_keys([_key_json(r, b, now) for r, b in zip(records, budgets, strict=True)], fmt, out)


_KEY_HEADER = ("KEY ID", "NAME", "TENANT", "STATUS", "RPM", "TPM", "CONC", "BUDGET TOK",
               "BUDGET USD", "PERIOD", "REMAINING USD", "MODELS", "EXPIRES", "CREATED")  # fmt: skip
_TENANT_HEADER = ("TENANT", "SOURCE", "RPM", "TPM", "CONC", "BUDGET TOK", "BUDGET USD", "PERIOD",
                  "REMAINING USD", "CREATED")  # fmt: skip


def _row_limits(item: dict[str, Any]) -> list[str]:
    return [str(item[n] or "-") for n in ("rpm", "tpm", "max_concurrency", "budget_tokens")]


def _row_budget(item: dict[str, Any]) -> list[str]:
    """BUDGET USD, PERIOD, REMAINING USD; dashes without a dollar budget."""
    if item["remaining_usd"] is None:
        return ["-", "-", "-"]
    return [
        f"${usd_text(to_micro_usd(Decimal(item['budget_usd'])))}",
        item["budget_period"],
        f"${usd_text(to_micro_usd(Decimal(item['remaining_usd'])))}",
    ]


def write_keys(items: list[dict[str, Any]], fmt: Format, out: TextIO) -> None:
    """`keys list` output from its JSON rows, whichever path (Redis, admin API) made them."""
    if fmt == "json":
        _write_json(items, out)
        return
    rows: list[Sequence[str]] = [_KEY_HEADER]
    for item in items:
        rows.append(
            (
                item["key_id"],
                item["name"],
                item["tenant"] or "-",
                item["status"],
                *_row_limits(item),
                *_row_budget(item),
                ",".join(item["models"]) or "*",
                item["expires_at"] or "-",
                item["created_at"] or "-",
            )
        )
    _write_table(rows, out)


def write_tenants(items: list[dict[str, Any]], fmt: Format, out: TextIO) -> None:
    """`tenants list` output from its JSON rows, whichever path made them."""
    if fmt == "json":
        _write_json(items, out)
        return
    rows: list[Sequence[str]] = [_TENANT_HEADER]
    for item in items:
        rows.append(
            (
                item["id"],
                item["source"],
                *_row_limits(item),
                *_row_budget(item),
                item["created_at"] or "-",
            )
        )
    _write_table(rows, out)


def _key_json(record: KeyRecord, budget: Budget, now: float) -> dict[str, Any]:
    p = record.principal
    return {
        "key_id": p.key_id,
        "name": p.name,
        "tenant": p.tenant or None,
        "status": _status(record, now),
        **counts(p.limits),
        **budget.fields(),
        "models": list(p.allowed_models),
        "redis_failure_policy": policy_name(p),
        "roles": [ROLE_NAMES[r] for r in roles_of(p)],
        "expires_at": _iso(record.expires_at),
        "created_at": _iso(record.created_at),
    }


async def revoke(config: Config, key_identifier: str, out: TextIO = sys.stdout) -> None:
    async with _key_store(config) as store:
        record = await store.revoke(key_identifier)
    if record is None:
        raise AdminError(f"no key with id {key_identifier!r} (see `meshgate keys list`)")
    out.write(f"revoked {record.principal.key_id} ({record.principal.name})\n")


# -------------------------------------------------------------- tenants ----


def _tenant_config(tenant_id: str, change: LimitsChange) -> TenantConfig:
    """The tenant as the config schema checks it, so the CLI and the file accept the same ids."""
    given = {name: value for name, value in asdict(change).items() if value is not None}
    try:
        return TenantConfig(id=tenant_id, **given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "tenant"
        raise AdminError(f"tenant {where} {tenant_id!r}: {first['msg']}") from None


async def create_tenant(
    config: Config, tenant_id: str, change: LimitsChange, out: TextIO = sys.stdout
) -> None:
    tenant = _tenant_config(tenant_id, change)
    if tenant.id in config_tenants(config.tenants):
        raise AdminError(f"tenant {tenant.id!r} is declared in the config file already")
    async with _key_store(config) as store:
        record = await store.create_tenant(tenant)
    if record is None:
        raise AdminError(
            f"tenant {tenant.id!r} already exists (change it with `meshgate tenants update`)"
        )
    out.write(f"created tenant {record.id}\n")


async def update_tenant(
    config: Config, tenant_id: str, change: LimitsChange, out: TextIO = sys.stdout
) -> None:
    """Change a tenant's limits; every replica evicts the principals of its keys at once."""
    if not change.fields():
        raise AdminError("nothing to update: give at least one limit")
    if tenant_id in config_tenants(config.tenants):
        raise AdminError(f"tenant {tenant_id!r} is declared in the config file: change it there")
    async with _key_store(config) as store:
        record = await store.update_tenant(tenant_id, change)
    if record is None:
        raise AdminError(f"no tenant {tenant_id!r} (see `meshgate tenants list`)")
    out.write(f"updated tenant {record.id}: {describe(change)}\n")


async def list_tenants(
    config: Config, fmt: Format = "table", out: TextIO = sys.stdout, now: float | None = None
) -> None:
    """Config tenants first (they win over a Redis tenant of the same id), then Redis's."""
    now = time.time() if now is None else now
    shards = config.quota.shards
    declared = config_tenants(config.tenants)
    async with _key_store(config) as store:
        stored = [t for t in await store.list_tenants() if t.id not in declared]
        tenants = [*declared.values(), *stored]
        budgets = await _budgets(
            store,
            [t.limits for t in tenants],
            [tenant_prefix(shard_of(t.id, "", shards), t.id) for t in tenants],
            now,
        )
    write_tenants([_tenant_json(t, b) for t, b in zip(tenants, budgets, strict=True)], fmt, out)


def _tenant_json(tenant: TenantRecord, budget: Budget) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "source": tenant.source,
        **counts(tenant.limits),
        **budget.fields(),
        "created_at": _iso(tenant.created_at),
    }
