"""Quota state in Redis: one atomic script call per decision (see buckets.lua).

redis-py's `Script` sends EVALSHA and falls back to EVAL when Redis has lost
the script (a restart, or SCRIPT FLUSH), so quota recovers by itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from meshgate.v1 import common_pb2

_SCRIPT = Path(__file__).with_name("buckets.lua").read_text()


class Verdict(enum.IntEnum):
    ADMITTED = 0
    REQUESTS_EMPTY = 1
    TOKENS_SHORT = 2
    TOO_LARGE = 3
    CONCURRENCY_FULL = 4
    BUDGET_SPENT = 5


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    state: common_pb2.RateLimitState
    # Milliseconds until the request could fit; -1 when waiting cannot help.
    wait_ms: int

    @property
    def admitted(self) -> bool:
        return self.verdict is Verdict.ADMITTED


def keys_for(key_id: str) -> list[str]:
    tag = "{" + key_id + "}"
    return [f"mg:{tag}:requests", f"mg:{tag}:tokens", f"mg:{tag}:leases", f"mg:{tag}:spent"]


def _limits(limits: common_pb2.Limits) -> list[int]:
    return [
        limits.requests_per_minute,
        limits.tokens_per_minute,
        limits.max_concurrency,
        limits.budget_tokens,
    ]


class Buckets:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_SCRIPT)

    async def _call(
        self, key_id: str, limits: common_pb2.Limits, op: str, *extra: int | str
    ) -> Decision:
        raw: list[int] = await self._script(
            keys=keys_for(key_id), args=[op, *_limits(limits), *extra]
        )
        verdict, rem_req, rem_tok, reset_req, reset_tok, wait = (int(x) for x in raw)
        state = common_pb2.RateLimitState(
            limit_requests=limits.requests_per_minute,
            limit_tokens=limits.tokens_per_minute,
            remaining_requests=rem_req,
            remaining_tokens=rem_tok,
            reset_requests_ms=reset_req,
            reset_tokens_ms=reset_tok,
        )
        return Decision(Verdict(verdict), state, wait)

    async def reserve(
        self, key_id: str, limits: common_pb2.Limits, tokens: int, lease_id: str, lease_ttl_ms: int
    ) -> Decision:
        return await self._call(key_id, limits, "reserve", tokens, lease_id, lease_ttl_ms)

    async def settle_many(
        self, settlements: list[tuple[str, common_pb2.Limits, int, str, int]]
    ) -> None:
        """(key_id, limits, reserved, lease_id, used) each, in one pipelined round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id, limits, reserved, lease_id, used in settlements:
                await self._script(
                    keys=keys_for(key_id),
                    args=["settle", *_limits(limits), reserved, lease_id, used],
                    client=pipe,
                )
            await pipe.execute()

    async def peek(self, key_id: str, limits: common_pb2.Limits) -> Decision:
        return await self._call(key_id, limits, "peek")
