"""The key store: secrets are looked up by their SHA-256, never kept in the clear.

Two stores implement `KeyStore`: the config file's development keys, in
memory, and the production keys in Redis (`meshgate keys create`). Lookups go
by digest, so timing says nothing about the secret, and the final equality
check is `hmac.compare_digest`.

Redis layout (every key is reachable from the digest alone, so Redis Cluster works):
  mg:key:<digest hex>   hash: key_id, name, tenant, rpm, tpm, max_concurrency,
                        budget_tokens, models (JSON), expires_at, revoked_at,
                        created_at, redis_failure_policy
  mg:key-ids            hash: key_id -> digest hex (for list and revoke)
  mg:key-events         pub/sub channel: a digest hex whenever a key changes
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from redis.asyncio import Redis

from meshgate.config import KeyConfig
from meshgate.v1 import common_pb2

KEY_PREFIX = "mg:key:"
KEY_INDEX = "mg:key-ids"
KEY_EVENTS = "mg:key-events"
SECRET_PREFIX = "sk-mg-"

Policy = Literal["fail_closed", "fail_open"]


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def key_id(secret_digest: bytes) -> str:
    """A stable, non-secret identifier: enough of the hash to be unique, too little to brute-force."""
    return "key_" + secret_digest.hex()[:16]


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as stored: who it is, and whether it may still be used."""

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
    rpm: int,
    tpm: int,
    max_concurrency: int,
    budget_tokens: int,
    models: list[str] | tuple[str, ...],
    redis_failure_policy: str,
) -> common_pb2.Principal:
    return common_pb2.Principal(
        key_id=key_id(secret_digest),
        name=name,
        tenant=tenant,
        limits=common_pb2.Limits(
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            max_concurrency=max_concurrency,
            budget_tokens=budget_tokens,
        ),
        allowed_models=list(models),
        redis_failure_policy=redis_failure_policy,
    )


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
                    rpm=key.rpm,
                    tpm=key.tpm,
                    max_concurrency=key.max_concurrency,
                    budget_tokens=key.budget_tokens,
                    models=key.models,
                    redis_failure_policy=key.redis_failure_policy,
                ),
            )

    async def lookup(self, secret_digest: bytes) -> KeyRecord | None:
        return self._by_digest.get(secret_digest)


def _record(secret_digest: bytes, fields: dict[bytes, bytes]) -> KeyRecord:
    def text(name: str, default: str = "") -> str:
        return fields.get(name.encode(), default.encode()).decode()

    return KeyRecord(
        secret_digest,
        principal(
            secret_digest,
            name=text("name"),
            tenant=text("tenant", "default"),
            rpm=int(text("rpm", "0")),
            tpm=int(text("tpm", "0")),
            max_concurrency=int(text("max_concurrency", "0")),
            budget_tokens=int(text("budget_tokens", "0")),
            models=json.loads(text("models", "[]")),
            redis_failure_policy=text("redis_failure_policy", "fail_closed"),
        ),
        expires_at=float(text("expires_at", "0")),
        revoked_at=float(text("revoked_at", "0")),
        created_at=float(text("created_at", "0")),
    )


class RedisKeyStore:
    """Production keys, stored hashed in Redis; also the admin operations behind `meshgate keys`."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def lookup(self, secret_digest: bytes) -> KeyRecord | None:
        fields: dict[bytes, bytes] = await self.redis.hgetall(KEY_PREFIX + secret_digest.hex())  # type: ignore[assignment]
        return _record(secret_digest, fields) if fields else None

    async def create(
        self,
        *,
        name: str,
        tenant: str = "default",
        rpm: int = 0,
        tpm: int = 0,
        max_concurrency: int = 0,
        budget_tokens: int = 0,
        models: tuple[str, ...] = (),
        expires_at: float = 0.0,
        redis_failure_policy: Policy = "fail_closed",
    ) -> tuple[str, KeyRecord]:
        """A new key; the secret is returned once and never stored."""
        secret = new_secret()
        d = digest(secret)
        mapping = {
            "key_id": key_id(d),
            "name": name,
            "tenant": tenant,
            "rpm": rpm,
            "tpm": tpm,
            "max_concurrency": max_concurrency,
            "budget_tokens": budget_tokens,
            "models": json.dumps(list(models)),
            "expires_at": expires_at,
            "revoked_at": 0,
            "created_at": time.time(),
            "redis_failure_policy": redis_failure_policy,
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

    async def revoke(self, key_identifier: str) -> KeyRecord | None:
        """Mark a key revoked and tell every auth replica to drop it from its cache."""
        raw = await self.redis.hget(KEY_INDEX, key_identifier)
        if raw is None:
            return None
        hex_digest = raw.decode() if isinstance(raw, bytes) else raw
        await self.redis.hset(KEY_PREFIX + hex_digest, "revoked_at", time.time())
        await self.redis.publish(KEY_EVENTS, hex_digest)
        return await self.lookup(bytes.fromhex(hex_digest))
