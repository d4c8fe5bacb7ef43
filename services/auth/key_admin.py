"""`AdminService`: key and tenant management over gRPC, served by auth (which owns the key store).

The admin listener and the CLI call it; neither touches Redis. Every change goes
through `RedisKeyStore`, which announces it on `mg:key-events`, so every auth
replica and every edge drops what it cached at once. A secret exists only in
the answer to CreateKey or RotateKey: it is stored as a hash and never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import TypeVar

from pydantic import ValidationError
from redis.exceptions import RedisError

from meshgate.config import RoleName, TenantConfig
from meshgate.errors import ApiError, invalid_request
from meshgate.grpcio import Context
from meshgate.shards import key_prefix, shard_of, tenant_prefix
from meshgate.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from services.auth.admin import _budgets
from services.auth.keys import (
    PERIOD_NAMES,
    POLICY_NAMES,
    ROLE_NAMES,
    KeyRecord,
    LimitsChange,
    RedisKeyStore,
    TenantRecord,
    config_tenants,
    roles_of,
    settings,
)

log = logging.getLogger("meshgate.auth")
T = TypeVar("T")

NO_STORE = ApiError(
    503,
    "server_error",
    "The key store is not configured (redis.url is empty), so keys cannot be managed.",
)
STORE_DOWN = ApiError(
    503,
    "server_error",
    "The key store is unreachable right now. Please retry.",
    retry_after=1,
)


def key_not_found(key_id: str) -> ApiError:
    return ApiError(404, "invalid_request_error", f"No key with id {key_id!r}.", param="key_id")


def tenant_not_found(tenant_id: str, param: str = "id") -> ApiError:
    return ApiError(404, "invalid_request_error", f"No tenant {tenant_id!r}.", param=param)


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _chains(fallbacks: Mapping[str, common_pb2.ModelFallbacks]) -> dict[str, list[str]]:
    return {model: list(chain.models) for model, chain in fallbacks.items()}


def _key(record: KeyRecord, spent_micro_usd: int = 0) -> admin_pb2.Key:
    p = record.principal
    return admin_pb2.Key(
        key_id=p.key_id,
        name=p.name,
        tenant=p.tenant,
        limits=p.limits,
        models=list(p.allowed_models),
        redis_failure_policy=p.redis_failure_policy,
        roles=roles_of(p),
        created_unix_us=_us(record.created_at),
        expires_unix_us=_us(record.expires_at),
        revoked_unix_us=_us(record.revoked_at),
        spent_micro_usd=spent_micro_usd,
        fallbacks=dict(p.fallbacks),
    )


def _tenant(record: TenantRecord, spent_micro_usd: int = 0) -> admin_pb2.Tenant:
    return admin_pb2.Tenant(
        id=record.id,
        limits=record.limits,
        source=record.source,
        created_unix_us=_us(record.created_at),
        spent_micro_usd=spent_micro_usd,
    )


def _check_limits(limits: common_pb2.Limits | admin_pb2.LimitsUpdate, where: str) -> None:
    for name in (
        "requests_per_minute",
        "tokens_per_minute",
        "max_concurrency",
        "budget_tokens",
        "budget_micro_usd",
    ):
        if getattr(limits, name) < 0:
            raise invalid_request(
                f"{where}.{name} must be 0 (unlimited) or more", f"{where}.{name}"
            )
    if limits.budget_period not in PERIOD_NAMES:
        raise invalid_request(f"{where}.budget_period is not a period", f"{where}.budget_period")


def _change(update: admin_pb2.LimitsUpdate) -> LimitsChange:
    """The store's change from the wire's: only the fields that are set."""
    _check_limits(update, "limits")

    def given(name: str) -> int | None:
        return getattr(update, name) if update.HasField(name) else None

    micro = given("budget_micro_usd")
    period = given("budget_period")
    return LimitsChange(
        rpm=given("requests_per_minute"),
        tpm=given("tokens_per_minute"),
        max_concurrency=given("max_concurrency"),
        budget_tokens=given("budget_tokens"),
        budget_usd=None if micro is None else Decimal(micro).scaleb(-6),
        budget_period=None if period is None else PERIOD_NAMES[period],
    )


def _role_names(roles: Sequence[int], where: str = "roles") -> tuple[RoleName, ...]:
    names = []
    for index, role in enumerate(roles):
        name = ROLE_NAMES.get(role)
        if name is None:
            raise invalid_request(f"{where}[{index}] is not a role", f"{where}[{index}]")
        names.append(name)
    return tuple(sorted(set(names)))


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        store: RedisKeyStore | None,
        tenants: tuple[TenantConfig, ...],
        shards: int,
        models: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._config_tenants = config_tenants(tenants)
        self._shards = shards
        self._models = set(models)

    def _check_models(self, models: Sequence[str]) -> None:
        """A key may name only catalog models: a typo would otherwise lock it out silently."""
        for index, model in enumerate(models):
            if model not in self._models:
                raise invalid_request(
                    f"models[{index}]: {model!r} is not in the model catalog", f"models[{index}]"
                )

    def _check_fallbacks(self, fallbacks: Mapping[str, common_pb2.ModelFallbacks]) -> None:
        """Fallbacks name catalog models, each other than the model it stands in for."""
        for model, chain in sorted(fallbacks.items()):
            if model not in self._models:
                raise invalid_request(
                    f"fallbacks.{model}: {model!r} is not in the model catalog", "fallbacks"
                )
            for index, name in enumerate(chain.models):
                if name not in self._models or name == model:
                    raise invalid_request(
                        f"fallbacks.{model}[{index}]: {name!r} is not another catalog model",
                        "fallbacks",
                    )

    async def _run(self, context: Context, action: Callable[[RedisKeyStore], Awaitable[T]]) -> T:
        """Run one store operation: its ApiError, or the key store's outage, ends the RPC."""
        try:
            if self._store is None:
                raise NO_STORE
            return await action(self._store)
        except ApiError as exc:
            await exc.abort(context)
        except (RedisError, OSError) as exc:
            log.error("key store unreachable", extra={"error": type(exc).__name__})
            await STORE_DOWN.abort(context)

    async def _spent(self, store: RedisKeyStore, records: list[KeyRecord]) -> list[admin_pb2.Key]:
        budgets = await _budgets(
            store,
            [r.principal.limits for r in records],
            [
                key_prefix(
                    shard_of(r.principal.tenant, r.principal.key_id, self._shards),
                    r.principal.key_id,
                )
                for r in records
            ],
            time.time(),
        )
        return [_key(r, b.spent_micro_usd) for r, b in zip(records, budgets, strict=True)]

    async def _tenant_exists(self, store: RedisKeyStore, tenant: str) -> bool:
        return tenant in self._config_tenants or await store.tenant(tenant) is not None

    # ---------------------------------------------------------------- keys ----

    async def CreateKey(
        self, request: admin_pb2.CreateKeyRequest, context: Context
    ) -> admin_pb2.CreateKeyResponse:
        async def create(store: RedisKeyStore) -> admin_pb2.CreateKeyResponse:
            if not request.name.strip():
                raise invalid_request("name is required", "name")
            _check_limits(request.limits, "limits")
            if request.expires_unix_us and request.expires_unix_us <= _us(time.time()):
                raise invalid_request("expires_at is in the past", "expires_at")
            self._check_models(request.models)
            self._check_fallbacks(request.fallbacks)
            if request.tenant and not await self._tenant_exists(store, request.tenant):
                raise tenant_not_found(request.tenant, "tenant")
            limits = request.limits
            secret, record = await store.create(
                name=request.name,
                tenant=request.tenant,
                **settings(limits),
                models=tuple(request.models),
                expires_at=request.expires_unix_us / 1e6,
                redis_failure_policy=POLICY_NAMES.get(request.redis_failure_policy, "fail_closed"),
                roles=_role_names(list(request.roles)) or ("api",),
                fallbacks=_chains(request.fallbacks),
            )
            return admin_pb2.CreateKeyResponse(key=_key(record), secret=secret)

        return await self._run(context, create)

    async def ListKeys(
        self, request: admin_pb2.ListKeysRequest, context: Context
    ) -> admin_pb2.ListKeysResponse:
        async def listing(store: RedisKeyStore) -> admin_pb2.ListKeysResponse:
            return admin_pb2.ListKeysResponse(keys=await self._spent(store, await store.list()))

        return await self._run(context, listing)

    async def GetKey(
        self, request: admin_pb2.GetKeyRequest, context: Context
    ) -> admin_pb2.GetKeyResponse:
        async def get(store: RedisKeyStore) -> admin_pb2.GetKeyResponse:
            record = await store.find(request.key_id)
            if record is None:
                raise key_not_found(request.key_id)
            (key,) = await self._spent(store, [record])
            return admin_pb2.GetKeyResponse(key=key)

        return await self._run(context, get)

    async def UpdateKey(
        self, request: admin_pb2.UpdateKeyRequest, context: Context
    ) -> admin_pb2.UpdateKeyResponse:
        async def update(store: RedisKeyStore) -> admin_pb2.UpdateKeyResponse:
            change = _change(request.limits)
            if request.replace_models:
                self._check_models(request.models)
            if request.replace_fallbacks:
                self._check_fallbacks(request.fallbacks)
            roles = _role_names(list(request.roles)) if request.roles else None
            expires = request.expires_unix_us if request.HasField("expires_unix_us") else None
            if expires and expires <= _us(time.time()):
                raise invalid_request("expires_at is in the past", "expires_at")
            record = await store.update(
                request.key_id,
                change,
                models=tuple(request.models) if request.replace_models else None,
                expires_at=None if expires is None else expires / 1e6,
                roles=roles,
                fallbacks=_chains(request.fallbacks) if request.replace_fallbacks else None,
            )
            if record is None:
                raise key_not_found(request.key_id)
            (key,) = await self._spent(store, [record])
            return admin_pb2.UpdateKeyResponse(key=key)

        return await self._run(context, update)

    async def RevokeKey(
        self, request: admin_pb2.RevokeKeyRequest, context: Context
    ) -> admin_pb2.RevokeKeyResponse:
        async def revoke(store: RedisKeyStore) -> admin_pb2.RevokeKeyResponse:
            record = await store.find(request.key_id)
            if record is not None and record.revoked_at:  # once: the first time stays on record
                return admin_pb2.RevokeKeyResponse(key=_key(record))
            record = await store.revoke(request.key_id)
            if record is None:
                raise key_not_found(request.key_id)
            return admin_pb2.RevokeKeyResponse(key=_key(record))

        return await self._run(context, revoke)

    async def RotateKey(
        self, request: admin_pb2.RotateKeyRequest, context: Context
    ) -> admin_pb2.RotateKeyResponse:
        async def rotate(store: RedisKeyStore) -> admin_pb2.RotateKeyResponse:
            old = await store.find(request.key_id)
            if old is None:
                raise key_not_found(request.key_id)
            if old.revoked_at:
                raise invalid_request("the key is revoked already; create a new one", "key_id")
            p = old.principal
            secret, record = await store.create(
                name=p.name,
                tenant=p.tenant,
                **settings(p.limits),
                models=tuple(p.allowed_models),
                expires_at=old.expires_at,
                redis_failure_policy=POLICY_NAMES.get(p.redis_failure_policy, "fail_closed"),
                roles=_role_names(roles_of(p)),
                fallbacks=_chains(p.fallbacks),
            )
            revoked = await store.revoke(request.key_id)
            assert revoked is not None
            return admin_pb2.RotateKeyResponse(
                key=_key(record), secret=secret, revoked=_key(revoked)
            )

        return await self._run(context, rotate)

    # ------------------------------------------------------------- tenants ----

    async def _tenants(
        self, store: RedisKeyStore, records: list[TenantRecord]
    ) -> list[admin_pb2.Tenant]:
        budgets = await _budgets(
            store,
            [t.limits for t in records],
            [tenant_prefix(shard_of(t.id, "", self._shards), t.id) for t in records],
            time.time(),
        )
        return [_tenant(t, b.spent_micro_usd) for t, b in zip(records, budgets, strict=True)]

    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: Context
    ) -> admin_pb2.CreateTenantResponse:
        async def create(store: RedisKeyStore) -> admin_pb2.CreateTenantResponse:
            _check_limits(request.limits, "limits")
            limits = request.limits
            try:
                tenant = TenantConfig(
                    id=request.id,
                    **settings(limits),
                )
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(part) for part in first["loc"]) or "id"
                raise invalid_request(f"{field}: {first['msg']}", field) from None
            if tenant.id in self._config_tenants:
                raise ApiError(
                    409,
                    "invalid_request_error",
                    f"Tenant {tenant.id!r} is declared in the config file.",
                    param="id",
                )
            record = await store.create_tenant(tenant)
            if record is None:
                raise ApiError(
                    409, "invalid_request_error", f"Tenant {tenant.id!r} exists.", param="id"
                )
            return admin_pb2.CreateTenantResponse(tenant=_tenant(record))

        return await self._run(context, create)

    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: Context
    ) -> admin_pb2.ListTenantsResponse:
        async def listing(store: RedisKeyStore) -> admin_pb2.ListTenantsResponse:
            declared = self._config_tenants
            stored = [t for t in await store.list_tenants() if t.id not in declared]
            tenants = await self._tenants(store, [*declared.values(), *stored])
            return admin_pb2.ListTenantsResponse(tenants=tenants)

        return await self._run(context, listing)

    async def UpdateTenant(
        self, request: admin_pb2.UpdateTenantRequest, context: Context
    ) -> admin_pb2.UpdateTenantResponse:
        async def update(store: RedisKeyStore) -> admin_pb2.UpdateTenantResponse:
            change = _change(request.limits)
            if request.id in self._config_tenants:
                raise ApiError(
                    409,
                    "invalid_request_error",
                    f"Tenant {request.id!r} is declared in the config file: change it there.",
                    param="id",
                )
            if not change.fields():
                raise invalid_request("nothing to update: give at least one limit", "limits")
            record = await store.update_tenant(request.id, change)
            if record is None:
                raise tenant_not_found(request.id)
            (tenant,) = await self._tenants(store, [record])
            return admin_pb2.UpdateTenantResponse(tenant=tenant)

        return await self._run(context, update)
