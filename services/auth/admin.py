"""`meshgate keys create|list|revoke`: key management against the Redis key store.

The secret is printed once, at creation, and never stored; `list` shows key
ids, names and limits only.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Literal, TextIO

from redis.exceptions import RedisError

from meshgate import redis_client
from meshgate.config import Config
from services.auth.keys import KeyRecord, RedisKeyStore

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class AdminError(Exception):
    """A key-management failure with a message fit for the terminal."""


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
    if not config.redis.url:
        raise AdminError(
            "the key store lives in Redis: set REDIS_URL (or redis.url in the config); "
            "`meshgate up` prints the URL of its embedded Redis"
        )
    # An operator at a terminal can wait longer than a request can.
    redis = redis_client.connect(
        config.redis.model_copy(update={"timeout_ms": config.redis.timeout_ms * 4})
    )
    try:
        yield RedisKeyStore(redis)
    except (RedisError, OSError) as exc:
        raise AdminError(
            f"cannot reach Redis at the configured URL: {type(exc).__name__}"
        ) from None
    finally:
        await redis.aclose()


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


async def create(
    config: Config,
    *,
    name: str,
    tenant: str,
    rpm: int,
    tpm: int,
    max_concurrency: int,
    budget_tokens: int,
    models: tuple[str, ...],
    expires: str | None,
    redis_failure_policy: Literal["fail_closed", "fail_open"],
    out: TextIO = sys.stdout,
) -> None:
    async with _key_store(config) as store:
        secret, record = await store.create(
            name=name,
            tenant=tenant,
            rpm=rpm,
            tpm=tpm,
            max_concurrency=max_concurrency,
            budget_tokens=budget_tokens,
            models=models,
            expires_at=parse_expires(expires) if expires else 0.0,
            redis_failure_policy=redis_failure_policy,
        )
    out.write(f"{secret}\n")
    out.flush()
    sys.stderr.write(
        f"created {record.principal.key_id} ({name}); the key above is shown only once\n"
    )


async def list_keys(config: Config, out: TextIO = sys.stdout) -> None:
    async with _key_store(config) as store:
        records = await store.list()
    now = time.time()
    header = (
        "KEY ID",
        "NAME",
        "TENANT",
        "STATUS",
        "RPM",
        "TPM",
        "CONC",
        "BUDGET",
        "MODELS",
        "EXPIRES",
        "CREATED",
    )
    rows = [header]
    for r in records:
        limits = r.principal.limits
        rows.append(
            (
                r.principal.key_id,
                r.principal.name,
                r.principal.tenant,
                _status(r, now),
                str(limits.requests_per_minute or "-"),
                str(limits.tokens_per_minute or "-"),
                str(limits.max_concurrency or "-"),
                str(limits.budget_tokens or "-"),
                ",".join(r.principal.allowed_models) or "*",
                _when(r.expires_at),
                _when(r.created_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        out.write(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


async def revoke(config: Config, key_identifier: str, out: TextIO = sys.stdout) -> None:
    async with _key_store(config) as store:
        record = await store.revoke(key_identifier)
    if record is None:
        raise AdminError(f"no key with id {key_identifier!r} (see `meshgate keys list`)")
    out.write(f"revoked {record.principal.key_id} ({record.principal.name})\n")
