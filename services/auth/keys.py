"""The key store: secrets are looked up by their SHA-256, never kept in the clear.

This issue's store holds the config file's development keys; the Redis-backed
store of the auth-and-quota issue implements the same `KeyStore` protocol.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from meshgate.config import KeyConfig
from meshgate.v1 import common_pb2


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def key_id(secret_digest: bytes) -> str:
    """A stable, non-secret identifier: enough of the hash to be unique, too little to brute-force."""
    return "key_" + secret_digest.hex()[:16]


class KeyStore(Protocol):
    async def lookup(self, secret: str) -> common_pb2.Principal | None: ...


class ConfigKeyStore:
    """Keys declared in the config file, indexed by digest."""

    def __init__(self, keys: tuple[KeyConfig, ...]) -> None:
        self._by_digest: dict[bytes, common_pb2.Principal] = {}
        for key in keys:
            d = digest(key.secret)
            self._by_digest[d] = common_pb2.Principal(
                key_id=key_id(d),
                name=key.name,
                tenant=key.tenant,
                limits=common_pb2.Limits(
                    requests_per_minute=key.rpm,
                    tokens_per_minute=key.tpm,
                    max_concurrency=key.max_concurrency,
                    budget_tokens=key.budget_tokens,
                ),
                allowed_models=list(key.models),
                redis_failure_policy=key.redis_failure_policy,
            )

    async def lookup(self, secret: str) -> common_pb2.Principal | None:
        d = digest(secret)
        principal = self._by_digest.get(d)
        # The dict lookup is by digest, so timing says nothing about the secret;
        # compare_digest keeps the final equality check constant-time as well.
        if principal is None or not hmac.compare_digest(digest(secret), d):
            return None
        return principal
