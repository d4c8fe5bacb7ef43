"""The auth service: Bearer parsing and key lookup, with a revocation-aware cache.

Config-file keys are checked in memory; production keys come from Redis and
are cached for `auth.cache_ttl_ms`. A revocation publishes the key's digest on
`mg:key-events`; every auth replica evicts it at once, and the TTL bounds the
staleness should a message be missed (the cache is also cleared whenever the
subscription reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from meshgate import grpcio, redis_client
from meshgate.config import Config
from meshgate.errors import DOC_URL_KEYS, ApiError
from meshgate.grpcio import Context
from meshgate.v1 import auth_pb2, auth_pb2_grpc
from services.auth.keys import KEY_EVENTS, ConfigKeyStore, KeyRecord, RedisKeyStore, digest, key_id

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
    """Redis lookups cached briefly; misses are never cached, so a new key works at once."""

    def __init__(self, store: RedisKeyStore, ttl_s: float) -> None:
        self._store = store
        self._ttl = ttl_s
        self._cache: dict[bytes, tuple[float, KeyRecord]] = {}

    async def lookup(self, secret_digest: bytes) -> KeyRecord | None:
        now = time.monotonic()
        hit = self._cache.get(secret_digest)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            record = await self._store.lookup(secret_digest)
        except (RedisError, OSError):
            if hit is not None:
                return hit[1]  # Redis is down: a key seen recently stays usable
            raise
        if record is None:
            self._cache.pop(secret_digest, None)
        else:
            self._cache[secret_digest] = (now, record)
        return record

    def evict(self, secret_digest: bytes) -> None:
        self._cache.pop(secret_digest, None)

    async def follow_revocations(self, redis: Redis, announce: Callable[[str], None]) -> None:
        """Evict keys as `mg:key-events` announces changes, tell watchers; reconnect forever."""
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(KEY_EVENTS)
                    self._cache.clear()  # anything announced while unsubscribed is gone
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            secret_digest = bytes.fromhex(message["data"].decode())
                            self.evict(secret_digest)
                            announce(key_id(secret_digest))
            except (RedisError, OSError, ValueError):
                self._cache.clear()
                await asyncio.sleep(0.5)


class AuthService(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, config_keys: ConfigKeyStore, redis_keys: CachedKeyStore | None) -> None:
        self._config_keys = config_keys
        self._redis_keys = redis_keys
        self._watchers: set[asyncio.Queue[str]] = set()

    def announce(self, changed_key_id: str) -> None:
        """Pass a key change on to every WatchKeyEvents stream."""
        for queue in self._watchers:
            queue.put_nowait(changed_key_id)

    async def WatchKeyEvents(
        self, request: auth_pb2.WatchKeyEventsRequest, context: Context
    ) -> AsyncIterator[auth_pb2.WatchKeyEventsResponse]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            yield auth_pb2.WatchKeyEventsResponse()  # the watch is live
            while True:
                yield auth_pb2.WatchKeyEventsResponse(key_id=await queue.get())
        finally:
            self._watchers.discard(queue)

    async def _record(self, secret_digest: bytes) -> KeyRecord | None:
        record = await self._config_keys.lookup(secret_digest)
        if record is None and self._redis_keys is not None:
            record = await self._redis_keys.lookup(secret_digest)
        return record

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
        except (RedisError, OSError) as exc:
            log.error("key store unreachable", extra={"error": type(exc).__name__})
            await UNAVAILABLE.abort(context)
        if record is None or not record.matches(secret_digest):
            await INVALID.abort(context)
        if record.revoked_at:
            await REVOKED.abort(context)
        if record.expires_at and time.time() >= record.expires_at:
            await EXPIRED.abort(context)
        return auth_pb2.AuthenticateResponse(principal=record.principal)


async def run(config: Config) -> None:
    redis: Redis | None = None
    cached: CachedKeyStore | None = None
    follower: asyncio.Task[None] | None = None
    if config.redis.url:
        timeout = config.redis.timeout_ms / 1000
        redis = redis_client.connect(config.redis)
        cached = CachedKeyStore(RedisKeyStore(redis), config.auth.cache_ttl_ms / 1000)
        # The subscription blocks on reads, so it gets its own connection without a read timeout.
        listener = Redis.from_url(config.redis.url, socket_connect_timeout=timeout)
    service = AuthService(ConfigKeyStore(config.keys), cached)
    if cached is not None:
        follower = asyncio.create_task(cached.follow_revocations(listener, service.announce))

    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(service, server)
        return [auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name]

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
