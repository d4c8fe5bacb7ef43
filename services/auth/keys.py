"""The key store: secrets are looked up by their SHA-256, never kept in the clear; and tenants.

Two stores implement `KeyStore`: the config file's development keys, in
memory, and the production keys in Redis (`meshgate keys create`). Lookups go
by digest, so timing says nothing about the secret, and the final equality
check is `hmac.compare_digest`.

Tenants (teams) come from the same two places: `tenants:` in the config file
and `meshgate tenants create` in Redis. A tenant's limits apply across all of
its keys, on top of each key's own; a config tenant wins over a Redis one of
the same id, as config keys do.

Redis layout. Every Redis key is read and written by name, one key per
command (or per single-key script), so Redis Cluster works as it is:
  mg:key:<digest hex>   hash: key_id, name, tenant ("" = none), rpm, tpm,
                        max_concurrency, budget_tokens, budget_usd (a decimal
                        string, 6 places), budget_period (total|day|month),
                        models (JSON), expires_at, revoked_at, created_at,
                        redis_failure_policy, roles (JSON; absent = ["api"]),
                        fallbacks (JSON {model id: [model ids]}; absent = {})
  mg:key-ids            hash: key_id -> digest hex (for list, update and revoke)
  mg:tenant:<id>        hash: id, rpm, tpm, max_concurrency, budget_tokens,
                        budget_usd, budget_period, created_at
  mg:tenant-ids         set: every tenant id (for list); added before the hash,
                        so a listed id may lack its hash, never the reverse
  mg:key-events         pub/sub channel, one message per change:
                          <digest hex>   a key was revoked or updated
                          tenant:<id>    a tenant was created or updated
                        every auth replica evicts what it cached, and passes
                        the event on to the edges (`WatchKeyEvents`).

What quota spends against these limits lives elsewhere, under the shard's hash
tag (`meshgate/shards.py`).
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from decimal import Decimal, InvalidOperation
from typing import Literal, Protocol, TypedDict

from meshgate.config import BudgetPeriod, KeyConfig, LimitsConfig, RoleName, TenantConfig
from meshgate.pricing import micro_text, to_micro_usd
from meshgate.redis_client import Client
from meshgate.v1 import common_pb2

KEY_PREFIX = "mg:key:"
KEY_INDEX = "mg:key-ids"
TENANT_PREFIX = "mg:tenant:"
TENANT_INDEX = "mg:tenant-ids"
KEY_EVENTS = "mg:key-events"
TENANT_EVENT_PREFIX = "tenant:"
SECRET_PREFIX = "sk-mg-"

# The largest budget a Limits message can carry (int64 micro-dollars).
MAX_MICRO_USD = 2**63 - 1

Policy = Literal["fail_closed", "fail_open"]

PERIODS: dict[str, common_pb2.BudgetPeriod] = {
    "total": common_pb2.BUDGET_PERIOD_TOTAL,
    "day": common_pb2.BUDGET_PERIOD_DAY,
    "month": common_pb2.BUDGET_PERIOD_MONTH,
}
PERIOD_NAMES: dict[int, BudgetPeriod] = {
    common_pb2.BUDGET_PERIOD_UNSPECIFIED: "total",
    common_pb2.BUDGET_PERIOD_TOTAL: "total",
    common_pb2.BUDGET_PERIOD_DAY: "day",
    common_pb2.BUDGET_PERIOD_MONTH: "month",
}
# The config file and the key store spell the policy as text; the principal carries the enum.
POLICIES: dict[str, common_pb2.RedisFailurePolicy] = {
    "fail_closed": common_pb2.REDIS_FAILURE_POLICY_FAIL_CLOSED,
    "fail_open": common_pb2.REDIS_FAILURE_POLICY_FAIL_OPEN,
}
POLICY_NAMES: dict[int, Policy] = {
    common_pb2.REDIS_FAILURE_POLICY_UNSPECIFIED: "fail_closed",
    common_pb2.REDIS_FAILURE_POLICY_FAIL_CLOSED: "fail_closed",
    common_pb2.REDIS_FAILURE_POLICY_FAIL_OPEN: "fail_open",
}

ROLES: dict[str, common_pb2.Role] = {"api": common_pb2.ROLE_API, "admin": common_pb2.ROLE_ADMIN}
ROLE_NAMES: dict[int, RoleName] = {common_pb2.ROLE_API: "api", common_pb2.ROLE_ADMIN: "admin"}


def roles_of(principal: common_pb2.Principal) -> list[common_pb2.Role]:
    """The key's roles; a key made before roles existed has ROLE_API only."""
    return list(principal.roles) or [common_pb2.ROLE_API]


def has_role(principal: common_pb2.Principal, role: common_pb2.Role) -> bool:
    wanted = common_pb2.ROLE_API if role == common_pb2.ROLE_UNSPECIFIED else role
    return wanted in roles_of(principal)


# HSET the fields only if the hash exists (ARGV[1] = "1") or only if it does not
# ("0"): one key, one atomic step, so an update never resurrects a hash and a
# create never overwrites one. Returns 1 if it wrote.
_HSET_IF = """
if redis.call('EXISTS', KEYS[1]) == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  return 1
end
return 0
"""


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def key_id(secret_digest: bytes) -> str:
    """A stable, non-secret identifier: enough of the hash to be unique, too little to brute-force."""
    return "key_" + secret_digest.hex()[:16]


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


# ------------------------------------------------------------- dollars ----


def parse_usd(text: str) -> Decimal:
    """A dollar amount as an operator types it: `12.5`, `0.000125`; at most 6 places, >= 0."""
    try:
        value = Decimal(text.strip().removeprefix("$"))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a dollar amount (use digits, like 12.50)") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a dollar amount (use digits, like 12.50)")
    if value < 0:
        raise ValueError(f"{text!r} is negative (0 means unlimited)")
    try:
        micro = to_micro_usd(value)
    except ValueError:
        raise ValueError(f"{text!r} has more than 6 decimal places (a micro-dollar)") from None
    if micro > MAX_MICRO_USD:
        raise ValueError(f"{text!r} is too large")
    return Decimal(micro).scaleb(-6)


def usd_text(micro: int) -> str:
    """Dollars exactly, with at least 2 places and no needless zeros: 12.50, 0.000125."""
    whole, _, fraction = micro_text(micro).partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def _stored_usd(dollars: Decimal) -> str:
    """The hash's form of a dollar amount: exactly 6 places, so it reads back unchanged."""
    return micro_text(to_micro_usd(dollars))


# -------------------------------------------------------------- limits ----


def limits(config: LimitsConfig) -> common_pb2.Limits:
    """The wire form of a key's or tenant's limits (dollars become exact micro-dollars)."""
    return common_pb2.Limits(
        requests_per_minute=config.rpm,
        tokens_per_minute=config.tpm,
        max_concurrency=config.max_concurrency,
        budget_tokens=config.budget_tokens,
        budget_micro_usd=to_micro_usd(config.budget_usd),
        budget_period=PERIODS[config.budget_period],
    )


def period_name(limits: common_pb2.Limits) -> BudgetPeriod:
    return PERIOD_NAMES.get(limits.budget_period, "total")


class Counts(TypedDict):
    """The whole-number limits under their config names."""

    rpm: int
    tpm: int
    max_concurrency: int
    budget_tokens: int


class Settings(Counts):
    """Every limit under its config name, as the key store's `create` and TenantConfig
    take them as keyword arguments."""

    budget_usd: Decimal
    budget_period: BudgetPeriod


def counts(limits: common_pb2.Limits) -> Counts:
    """The whole-number limits under their config names (rpm, tpm...), for views and rows."""
    return Counts(
        rpm=limits.requests_per_minute,
        tpm=limits.tokens_per_minute,
        max_concurrency=limits.max_concurrency,
        budget_tokens=limits.budget_tokens,
    )


def settings(limits: common_pb2.Limits) -> Settings:
    """The inverse of `limits`: the config's names and values, dollars as a Decimal."""
    return Settings(
        **counts(limits),
        budget_usd=Decimal(limits.budget_micro_usd).scaleb(-6),
        budget_period=period_name(limits),
    )


def policy_name(principal: common_pb2.Principal) -> Policy:
    return POLICY_NAMES.get(principal.redis_failure_policy, "fail_closed")


@dataclass(frozen=True, slots=True)
class LimitsChange:
    """Limits to change; None leaves one as it is. Shared by `keys update` and `tenants update`."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget_tokens: int | None = None
    budget_usd: Decimal | None = None
    budget_period: BudgetPeriod | None = None

    def fields(self) -> dict[str, str]:
        """The changed fields in the hashes' stored form."""
        changed: dict[str, str] = {}
        for field in dataclass_fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            changed[field.name] = _stored_usd(value) if field.name == "budget_usd" else str(value)
        return changed


def _limit_fields(config: LimitsConfig) -> dict[str, str]:
    """Every limit of `config` in the hashes' stored form."""
    return LimitsChange(
        rpm=config.rpm,
        tpm=config.tpm,
        max_concurrency=config.max_concurrency,
        budget_tokens=config.budget_tokens,
        budget_usd=config.budget_usd,
        budget_period=config.budget_period,
    ).fields()


class _Fields:
    """A Redis hash as read back (bytes to bytes), with typed getters and defaults."""

    def __init__(self, raw: Mapping[bytes, bytes]) -> None:
        self._raw = raw

    def text(self, name: str, default: str = "") -> str:
        value = self._raw.get(name.encode())
        return default if value is None else value.decode()

    def integer(self, name: str) -> int:
        return int(self.text(name, "0") or 0)

    def number(self, name: str) -> float:
        return float(self.text(name, "0") or 0)

    def limits(self) -> common_pb2.Limits:
        period = self.text("budget_period", "total")
        return common_pb2.Limits(
            requests_per_minute=self.integer("rpm"),
            tokens_per_minute=self.integer("tpm"),
            max_concurrency=self.integer("max_concurrency"),
            budget_tokens=self.integer("budget_tokens"),
            budget_micro_usd=to_micro_usd(Decimal(self.text("budget_usd", "0") or "0")),
            budget_period=PERIODS.get(period, common_pb2.BUDGET_PERIOD_TOTAL),
        )


# ---------------------------------------------------------------- keys ----


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as stored: who it is, and whether it may still be used.

    `principal.tenant_limits` is left empty here: auth fills it in per request
    from the tenant store, so a tenant update needs no key to be rewritten.
    """

    digest: bytes
    principal: common_pb2.Principal
    expires_at: float = 0.0  # unix seconds; 0 means never
    revoked_at: float = 0.0  # unix seconds; 0 means not revoked
    created_at: float = 0.0

    def matches(self, secret_digest: bytes) -> bool:
        return hmac.compare_digest(self.digest, secret_digest)


def principal(
    secret_digest: bytes,
    *,
    name: str,
    tenant: str,
    key_limits: common_pb2.Limits,
    models: list[str] | tuple[str, ...],
    redis_failure_policy: str,
    roles: tuple[str, ...] | list[str] = ("api",),
    fallbacks: Mapping[str, Sequence[str]] | None = None,
) -> common_pb2.Principal:
    return common_pb2.Principal(
        roles=sorted({ROLES[r] for r in roles if r in ROLES} or {common_pb2.ROLE_API}),
        key_id=key_id(secret_digest),
        name=name,
        tenant=tenant,
        limits=key_limits,
        allowed_models=list(models),
        # Any spelling but "fail_open" fails closed, the safe side.
        redis_failure_policy=POLICIES.get(
            redis_failure_policy, common_pb2.REDIS_FAILURE_POLICY_FAIL_CLOSED
        ),
        fallbacks={
            model: common_pb2.ModelFallbacks(models=list(chain))
            for model, chain in (fallbacks or {}).items()
        },
    )


def _fallbacks_json(fallbacks: Mapping[str, Sequence[str]]) -> str:
    return json.dumps({model: list(chain) for model, chain in sorted(fallbacks.items())})


class KeyStore(Protocol):
    async def lookup(self, secret_digest: bytes) -> KeyRecord | None: ...


class ConfigKeyStore:
    """Keys declared in the config file, for development."""

    def __init__(self, keys: tuple[KeyConfig, ...]) -> None:
        self._by_digest: dict[bytes, KeyRecord] = {}
        for key in keys:
            d = digest(key.secret)
            self._by_digest[d] = KeyRecord(
                d,
                principal(
                    d,
                    name=key.name,
                    tenant=key.tenant,
                    key_limits=limits(key),
                    models=key.models,
                    redis_failure_policy=key.redis_failure_policy,
                    roles=key.roles,
                    fallbacks=key.fallbacks,
                ),
            )

    async def lookup(self, secret_digest: bytes) -> KeyRecord | None:
        return self._by_digest.get(secret_digest)


def _record(secret_digest: bytes, raw: Mapping[bytes, bytes]) -> KeyRecord:
    stored = _Fields(raw)
    return KeyRecord(
        secret_digest,
        principal(
            secret_digest,
            name=stored.text("name"),
            tenant=stored.text("tenant"),
            key_limits=stored.limits(),
            models=json.loads(stored.text("models", "[]")),
            redis_failure_policy=stored.text("redis_failure_policy", "fail_closed"),
            roles=json.loads(stored.text("roles", '["api"]')),
            fallbacks=json.loads(stored.text("fallbacks", "{}")),
        ),
        expires_at=stored.number("expires_at"),
        revoked_at=stored.number("revoked_at"),
        created_at=stored.number("created_at"),
    )


# ------------------------------------------------------------- tenants ----


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A tenant: its id, the limits its keys share, and where it was declared."""

    id: str
    limits: common_pb2.Limits
    created_at: float = 0.0
    source: Literal["redis", "config"] = "redis"


def config_tenants(tenants: tuple[TenantConfig, ...]) -> dict[str, TenantRecord]:
    """The config file's tenants by id (a later duplicate wins, as YAML mappings do)."""
    return {t.id: TenantRecord(t.id, limits(t), source="config") for t in tenants}


def _tenant(tenant_id: str, raw: Mapping[bytes, bytes]) -> TenantRecord:
    stored = _Fields(raw)
    return TenantRecord(tenant_id, stored.limits(), created_at=stored.number("created_at"))


def key_event(hex_digest: str) -> str:
    return hex_digest


def tenant_event(tenant_id: str) -> str:
    return TENANT_EVENT_PREFIX + tenant_id


def parse_event(data: bytes | str) -> tuple[Literal["key"], bytes] | tuple[Literal["tenant"], str]:
    """One `mg:key-events` message: ("key", digest) or ("tenant", id); ValueError otherwise."""
    text = data.decode() if isinstance(data, bytes) else data
    if text.startswith(TENANT_EVENT_PREFIX):
        tenant_id = text.removeprefix(TENANT_EVENT_PREFIX)
        if not tenant_id:
            raise ValueError("empty tenant event")
        return "tenant", tenant_id
    secret_digest = bytes.fromhex(text)
    if len(secret_digest) != hashlib.sha256().digest_size:
        raise ValueError("not a key digest")
    return "key", secret_digest


# ------------------------------------------------------- the Redis store ----


class RedisKeyStore:
    """Production keys (stored hashed) and tenants in Redis; also the admin operations
    behind `meshgate keys` and `meshgate tenants`."""

    def __init__(self, redis: Client) -> None:
        self.redis = redis
        self._hset_if = redis.register_script(_HSET_IF)

    async def lookup(self, secret_digest: bytes) -> KeyRecord | None:
        raw: dict[bytes, bytes] = await self.redis.hgetall(KEY_PREFIX + secret_digest.hex())  # type: ignore[assignment]
        return _record(secret_digest, raw) if raw else None

    async def _digest_of(self, key_identifier: str) -> str | None:
        raw = await self.redis.hget(KEY_INDEX, key_identifier)
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def find(self, key_identifier: str) -> KeyRecord | None:
        """A key by its id (as `keys list` shows it)."""
        hex_digest = await self._digest_of(key_identifier)
        return None if hex_digest is None else await self.lookup(bytes.fromhex(hex_digest))

    async def create(
        self,
        *,
        name: str,
        tenant: str = "",
        rpm: int = 0,
        tpm: int = 0,
        max_concurrency: int = 0,
        budget_tokens: int = 0,
        budget_usd: Decimal = Decimal(0),
        budget_period: BudgetPeriod = "total",
        models: tuple[str, ...] = (),
        expires_at: float = 0.0,
        redis_failure_policy: Policy = "fail_closed",
        roles: tuple[RoleName, ...] = ("api",),
        fallbacks: Mapping[str, Sequence[str]] | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key; the secret is returned once and never stored."""
        secret = new_secret()
        d = digest(secret)
        key_limits = LimitsConfig(
            rpm=rpm,
            tpm=tpm,
            max_concurrency=max_concurrency,
            budget_tokens=budget_tokens,
            budget_usd=budget_usd,
            budget_period=budget_period,
        )
        mapping = {
            "key_id": key_id(d),
            "name": name,
            "tenant": tenant,
            **_limit_fields(key_limits),
            "models": json.dumps(list(models)),
            "expires_at": str(expires_at),
            "revoked_at": "0",
            "created_at": str(time.time()),
            "redis_failure_policy": redis_failure_policy,
            "roles": json.dumps(sorted(set(roles))),
            "fallbacks": _fallbacks_json(fallbacks or {}),
        }
        await self.redis.hset(KEY_PREFIX + d.hex(), mapping=mapping)  # type: ignore[arg-type]
        await self.redis.hset(KEY_INDEX, key_id(d), d.hex())
        record = await self.lookup(d)
        assert record is not None
        return secret, record

    async def list(self) -> list[KeyRecord]:
        index: dict[bytes, bytes] = await self.redis.hgetall(KEY_INDEX)  # type: ignore[assignment]
        records = []
        for hex_digest in index.values():
            record = await self.lookup(bytes.fromhex(hex_digest.decode()))
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.created_at)

    async def update(
        self,
        key_identifier: str,
        change: LimitsChange,
        *,
        models: tuple[str, ...] | None = None,
        expires_at: float | None = None,
        roles: tuple[RoleName, ...] | None = None,
        fallbacks: Mapping[str, Sequence[str]] | None = None,
    ) -> KeyRecord | None:
        """Change a key's limits in place (same secret) and tell every replica; None if unknown.

        `fallbacks`, when given, replaces the key's whole map ({} gives back the catalog's)."""
        hex_digest = await self._digest_of(key_identifier)
        if hex_digest is None:
            return None
        mapping = change.fields()
        if models is not None:
            mapping["models"] = json.dumps(list(models))
        if expires_at is not None:
            mapping["expires_at"] = str(expires_at)
        if roles is not None:
            mapping["roles"] = json.dumps(sorted(set(roles)))
        if fallbacks is not None:
            mapping["fallbacks"] = _fallbacks_json(fallbacks)
        if mapping and not await self._write(KEY_PREFIX + hex_digest, mapping, exists=True):
            return None
        await self.redis.publish(KEY_EVENTS, key_event(hex_digest))
        return await self.lookup(bytes.fromhex(hex_digest))

    async def revoke(self, key_identifier: str) -> KeyRecord | None:
        """Mark a key revoked and tell every auth replica to drop it from its cache."""
        hex_digest = await self._digest_of(key_identifier)
        if hex_digest is None:
            return None
        await self.redis.hset(KEY_PREFIX + hex_digest, "revoked_at", time.time())
        await self.redis.publish(KEY_EVENTS, key_event(hex_digest))
        return await self.lookup(bytes.fromhex(hex_digest))

    async def _write(self, name: str, mapping: Mapping[str, str], *, exists: bool) -> bool:
        """HSET `mapping` into hash `name` only if it exists (or only if not); True if written."""
        flat = [part for pair in mapping.items() for part in pair]
        written = await self._hset_if(keys=[name], args=["1" if exists else "0", *flat])
        return bool(written)

    # tenants

    async def tenant(self, tenant_id: str) -> TenantRecord | None:
        raw: dict[bytes, bytes] = await self.redis.hgetall(TENANT_PREFIX + tenant_id)  # type: ignore[assignment]
        return _tenant(tenant_id, raw) if raw else None

    async def create_tenant(self, tenant: TenantConfig) -> TenantRecord | None:
        """A new tenant; None if the id is taken. Announced, so no replica keeps a stale miss."""
        await self.redis.sadd(TENANT_INDEX, tenant.id)
        mapping = {"id": tenant.id, **_limit_fields(tenant), "created_at": str(time.time())}
        if not await self._write(TENANT_PREFIX + tenant.id, mapping, exists=False):
            return None
        await self.redis.publish(KEY_EVENTS, tenant_event(tenant.id))
        return await self.tenant(tenant.id)

    async def update_tenant(self, tenant_id: str, change: LimitsChange) -> TenantRecord | None:
        """Change a tenant's limits and evict every cached principal of its keys; None if unknown."""
        mapping = change.fields()
        if mapping and not await self._write(TENANT_PREFIX + tenant_id, mapping, exists=True):
            return None
        await self.redis.publish(KEY_EVENTS, tenant_event(tenant_id))
        return await self.tenant(tenant_id)

    async def list_tenants(self) -> builtins.list[TenantRecord]:
        ids = await self.redis.smembers(TENANT_INDEX)
        records = []
        for raw_id in ids:
            record = await self.tenant(raw_id.decode() if isinstance(raw_id, bytes) else raw_id)
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: (r.created_at, r.id))
