"""The auth service: Bearer parsing, key lookup and tenant limits, with an event-aware cache.

Config-file keys and tenants are checked in memory; production ones come from
Redis and are cached for `auth.cache_ttl_ms`. Every change publishes on
`mg:key-events` (`services/auth/keys.py`): a key's digest when it is revoked
or updated, `tenant:<id>` when a tenant is created or updated. Every auth
replica evicts at once and passes the event on to `WatchKeyEvents` streams, so
the edges evict the principals they cache too (by key id, or every principal of
the tenant). The TTL bounds the staleness should a message be missed (the
cache is also cleared whenever the subscription reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from meshgate import grpcio, redis_client
from meshgate.config import Config
from meshgate.errors import DOC_URL_KEYS, ApiError
from meshgate.grpcio import Context
from meshgate.v1 import admin_pb2, admin_pb2_grpc, auth_pb2, auth_pb2_grpc, common_pb2
from services.auth.key_admin import AdminService
from services.auth.keys import (
    KEY_EVENTS,
    ConfigKeyStore,
    KeyRecord,
    RedisKeyStore,
    TenantRecord,
    config_tenants,
    digest,
    has_role,
    key_id,
    parse_event,
)

Event = auth_pb2.WatchKeyEventsResponse
_K = TypeVar("_K", bytes, str)
_T = TypeVar("_T")

log = logging.getLogger("meshgate.auth")


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, "authentication_error", message, code=code, doc_url=DOC_URL_KEYS)


MISSING = _unauthorized(
    "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY).",
    "missing_api_key",
)
WRONG_SCHEME = _unauthorized(
    "Unsupported authorization scheme. Only Bearer tokens are accepted (Authorization: Bearer YOUR_KEY).",
    "invalid_auth_scheme",
)
INVALID = _unauthorized(
    "Invalid API key. Create one with `meshgate keys create`.", "invalid_api_key"
)
REVOKED = _unauthorized(
    "This API key has been revoked. Create a new one with `meshgate keys create`.",
    "revoked_api_key",
)
EXPIRED = _unauthorized(
    "This API key has expired. Create a new one with `meshgate keys create`.", "expired_api_key"
)
NOT_ADMIN = ApiError(
    403,
    "permission_error",
    "This key does not have the admin role. The admin API takes admin keys only "
    "(`meshgate keys create --admin`).",
    code="admin_role_required",
)
NOT_API = ApiError(
    403,
    "permission_error",
    "This key has the admin role only, which does not include the inference API. "
    "Use an API key, or give this key the api role too.",
    code="api_role_required",
)
UNAVAILABLE = ApiError(
    503,
    "server_error",
    "API keys cannot be checked right now (the key store is unreachable). Please retry.",
    retry_after=1,
)


def parse_bearer(header: str) -> str | ApiError:
    """The key from `Bearer <key>`, or the precise error for a malformed header."""
    if not header.strip():
        return MISSING
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return WRONG_SCHEME
    token = token.strip()
    if not token or " " in token:
        return INVALID
    return token


class CachedKeyStore:
    """Redis lookups of keys and tenants, cached briefly.

    Key misses are never cached, so a new key works at once; tenant misses are,
    since creating a tenant announces it. An eviction that lands while a
    lookup is in flight wins: the answer read before it is not cached.
    """

    def __init__(self, store: RedisKeyStore, ttl_s: float) -> None:
        self._store = store
        self._ttl = ttl_s
        self._keys: dict[bytes, tuple[float, KeyRecord | None]] = {}
        self._tenants: dict[str, tuple[float, TenantRecord | None]] = {}
        self._evictions = 0  # bumped by every eviction, to spot one during a lookup

    async def lookup(self, secret_digest: bytes) -> KeyRecord | None:
        record = await self._cached(self._keys, secret_digest, self._store.lookup)
        if record is None:
            self._keys.pop(secret_digest, None)
        return record

    async def tenant(self, tenant_id: str) -> TenantRecord | None:
        return await self._cached(self._tenants, tenant_id, self._store.tenant)

    async def _cached(
        self,
        cache: dict[_K, tuple[float, _T]],
        name: _K,
        fetch: Callable[[_K], Awaitable[_T]],
    ) -> _T:
        now = time.monotonic()
        hit = cache.get(name)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        evictions = self._evictions
        try:
            value = await fetch(name)
        except (RedisError, OSError):
            if hit is not None:
                return hit[1]  # Redis is down: what was seen recently stays usable
            raise
        if evictions == self._evictions:
            cache[name] = (now, value)
        return value

    def evict(self, secret_digest: bytes) -> None:
        self._evictions += 1
        self._keys.pop(secret_digest, None)

    def evict_tenant(self, tenant_id: str) -> None:
        self._evictions += 1
        self._tenants.pop(tenant_id, None)

    def clear(self) -> None:
        self._evictions += 1
        self._keys.clear()
        self._tenants.clear()

    async def follow_key_events(
        self, connect: Callable[[], Redis], announce: Callable[[Event], None]
    ) -> None:
        """Evict as `mg:key-events` announces changes, tell watchers; reconnect forever.

        Each reconnection opens a fresh connection (`connect`): on a cluster the
        next node, under Sentinel the current master, so a failover is followed.
        """
        while True:
            redis = connect()
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(KEY_EVENTS)
                    self.clear()  # anything announced while unsubscribed is gone
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._apply(message["data"], announce)
            except (RedisError, OSError):
                self.clear()
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await redis.aclose()

    def _apply(self, data: bytes, announce: Callable[[Event], None]) -> None:
        try:
            event = parse_event(data)
        except ValueError:
            log.warning("ignored a malformed key event")
            return
        if event[0] == "tenant":
            self.evict_tenant(event[1])
            announce(Event(tenant=event[1]))
        else:
            self.evict(event[1])
            announce(Event(key_id=key_id(event[1])))


class AuthService(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        config_keys: ConfigKeyStore,
        redis_keys: CachedKeyStore | None,
        tenants: dict[str, TenantRecord] | None = None,
    ) -> None:
        self._config_keys = config_keys
        self._redis_keys = redis_keys
        self._config_tenants = tenants or {}
        self._watchers: set[asyncio.Queue[Event]] = set()

    def announce(self, event: Event) -> None:
        """Pass a key or tenant change on to every WatchKeyEvents stream."""
        for queue in self._watchers:
            queue.put_nowait(event)

    async def WatchKeyEvents(
        self, request: auth_pb2.WatchKeyEventsRequest, context: Context
    ) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            yield Event()  # the watch is live
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)

    async def _record(self, secret_digest: bytes) -> KeyRecord | None:
        record = await self._config_keys.lookup(secret_digest)
        if record is None and self._redis_keys is not None:
            record = await self._redis_keys.lookup(secret_digest)
        return record

    async def _tenant(self, tenant_id: str) -> TenantRecord | None:
        """The config file's tenant of that id, else Redis's; None if neither has one."""
        tenant = self._config_tenants.get(tenant_id)
        if tenant is None and self._redis_keys is not None:
            tenant = await self._redis_keys.tenant(tenant_id)
        return tenant

    async def _principal(self, record: KeyRecord) -> common_pb2.Principal:
        """The key's principal with its tenant's limits; zero limits for a tenant that is gone."""
        if not record.principal.tenant:
            return record.principal
        tenant = await self._tenant(record.principal.tenant)
        if tenant is None:
            return record.principal
        principal = common_pb2.Principal()
        principal.CopyFrom(record.principal)
        principal.tenant_limits.CopyFrom(tenant.limits)
        return principal

    async def Authenticate(
        self,
        request: auth_pb2.AuthenticateRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.AuthenticateRequest, auth_pb2.AuthenticateResponse
        ],
    ) -> auth_pb2.AuthenticateResponse:
        token = parse_bearer(request.authorization)
        if isinstance(token, ApiError):
            await token.abort(context)
        secret_digest = digest(token)
        try:
            record = await self._record(secret_digest)
            if record is None or not record.matches(secret_digest):
                await INVALID.abort(context)
            if record.revoked_at:
                await REVOKED.abort(context)
            if record.expires_at and time.time() >= record.expires_at:
                await EXPIRED.abort(context)
            if not has_role(record.principal, request.role):
                await (NOT_ADMIN if request.role == common_pb2.ROLE_ADMIN else NOT_API).abort(
                    context
                )
            principal = await self._principal(record)
        except (RedisError, OSError) as exc:
            log.error("key store unreachable", extra={"error": type(exc).__name__})
            await UNAVAILABLE.abort(context)
        return auth_pb2.AuthenticateResponse(principal=principal)


async def run(config: Config) -> None:
    redis: redis_client.Client | None = None
    cached: CachedKeyStore | None = None
    follower: asyncio.Task[None] | None = None
    subscribers: redis_client.Subscribers | None = None
    if config.redis.configured:
        opened = await redis_client.open_redis(config.redis, wait=True)
        redis = opened.client
        cached = CachedKeyStore(RedisKeyStore(redis), config.auth.cache_ttl_ms / 1000)
        # The subscription blocks on reads, so it gets its own connection without a read timeout.
        subscribers = redis_client.Subscribers(opened, config.redis)
    service = AuthService(ConfigKeyStore(config.keys), cached, config_tenants(config.tenants))
    if cached is not None and subscribers is not None:
        follower = asyncio.create_task(cached.follow_key_events(subscribers.open, service.announce))

    admin = AdminService(
        RedisKeyStore(redis) if redis is not None else None,
        config.tenants,
        config.quota.shards,
        [m.id for m in config.models],
    )

    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(service, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        return [
            auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
        ]

    cfg = config.services.auth
    try:
        await grpcio.serve("auth", cfg, setup, tls=config.tls)
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        if redis is not None:
            await redis.aclose()
