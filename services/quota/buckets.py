"""Quota state in Redis: one atomic script call per decision (see buckets.lua).

redis-py's `Script` sends EVALSHA and falls back to EVAL when Redis has lost
the script (a restart, or SCRIPT FLUSH), so quota recovers by itself.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

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


# (key_id, limits, tokens reserved, lease id, tokens used)
Settlement = tuple[str, common_pb2.Limits, int, str, int]


def _decision(raw: list[int], limits: common_pb2.Limits) -> Decision:
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


def _failures(results: Sequence[Any]) -> int:
    return sum(isinstance(r, Exception) for r in results)


def _settle_call(settlement: Settlement) -> tuple[list[str], list[int | str]]:
    key_id, limits, reserved, lease_id, used = settlement
    return keys_for(key_id), ["settle", *_limits(limits), reserved, lease_id, used]


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
        return _decision(raw, limits)

    async def reserve(
        self,
        key_id: str,
        limits: common_pb2.Limits,
        tokens: int,
        lease_id: str,
        lease_ttl_ms: int,
        settlements: Sequence[Settlement] = (),
    ) -> tuple[Decision, int]:
        """Settle `settlements` first, then decide, all in one round trip.

        Returns the decision and how many settlements Redis refused. One bad
        settlement (a key Redis cannot update) must not refuse the reservation
        that carried it, nor every later one that would carry it again.
        """
        if not settlements:
            decision = await self._call(key_id, limits, "reserve", tokens, lease_id, lease_ttl_ms)
            return decision, 0
        reserve: list[int | str] = ["reserve", *_limits(limits), tokens, lease_id, lease_ttl_ms]
        calls = [*map(_settle_call, settlements), (keys_for(key_id), reserve)]
        *settled, decided = await self._pipelined(calls)
        if isinstance(decided, Exception):
            raise decided
        return _decision(decided, limits), _failures(settled)

    async def settle_many(self, settlements: Sequence[Settlement]) -> int:
        """All of them in one pipelined round trip; returns how many Redis refused."""
        return _failures(await self._pipelined([_settle_call(s) for s in settlements]))

    async def _pipelined(self, calls: list[tuple[list[str], list[int | str]]]) -> list[Any]:
        """EVALSHA each call in one round trip; a call's error comes back in its place.

        redis-py's own pipelined scripts ask SCRIPT EXISTS before every batch (a
        second round trip); instead, when Redis has lost the script (a restart,
        SCRIPT FLUSH) the batch is sent again after loading it. Every call uses
        the one script, so a NOSCRIPT batch ran none of them. A lost connection
        raises.
        """
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt or not any(isinstance(r, NoScriptError) for r in results):
                break
            await self._redis.script_load(_SCRIPT)
        return results

    async def peek(self, key_id: str, limits: common_pb2.Limits) -> Decision:
        return await self._call(key_id, limits, "peek")
