"""Quota state in Redis: one atomic script call per decision (see buckets.lua).

A request is judged against two subjects at once, its key and the key's
tenant, whose state shares one hash tag (meshgate/shards.py). Dollar budgets
count micro-dollars per period; the period comes from the request's admission
time, which the settlement carries, so a request settled after midnight
corrects the day it was charged to.

Pipelined calls send EVALSHA themselves and load the script again when Redis
has lost it (a restart, a failover, or SCRIPT FLUSH), so quota recovers by
itself. On Redis Cluster a pipeline goes to several masters at once (each call
names keys of one slot); only the calls that found no script are sent again.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import (
    ClusterError,
    ConnectionError,
    NoScriptError,
    RedisError,
    TimeoutError,
    TryAgainError,
)

from meshgate import shards
from meshgate.redis_client import Client
from meshgate.v1 import common_pb2

_SCRIPT = Path(__file__).with_name("buckets.lua").read_text()
_SWEEP = Path(__file__).with_name("sweep.lua").read_text()

_PERIODS = {
    common_pb2.BUDGET_PERIOD_DAY: "day",
    common_pb2.BUDGET_PERIOD_MONTH: "month",
}


class Verdict(enum.IntEnum):
    ADMITTED = 0
    REQUESTS_EMPTY = 1
    TOKENS_SHORT = 2
    TOO_LARGE = 3
    CONCURRENCY_FULL = 4
    BUDGET_SPENT = 5
    USD_BUDGET_SPENT = 6
    ALREADY_SETTLED = 7


class Subject(enum.IntEnum):
    NONE = 0
    KEY = 1
    TENANT = 2


def period_of(limits: common_pb2.Limits) -> str:
    return _PERIODS.get(limits.budget_period, "total")


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose buckets a request draws on: a key, and its tenant's limits on top."""

    key_id: str
    tenant: str
    key_limits: common_pb2.Limits
    tenant_limits: common_pb2.Limits

    @classmethod
    def of(cls, principal: common_pb2.Principal) -> Owner:
        return cls(principal.key_id, principal.tenant, principal.limits, principal.tenant_limits)

    @property
    def limited(self) -> bool:
        return is_limited(self.key_limits) or is_limited(self.tenant_limits)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    # Who refused: the key or its tenant (NONE when admitted).
    subject: Subject
    # The tightest of the key's and the tenant's state, for the x-ratelimit-* headers.
    state: common_pb2.RateLimitState
    # Milliseconds until the request could fit; -1 when waiting cannot help.
    wait_ms: int

    @property
    def admitted(self) -> bool:
        return self.verdict is Verdict.ADMITTED


# One script call: its KEYS and its ARGV.
Call = tuple[list[str], list[int | str | bytes]]


def is_limited(limits: common_pb2.Limits) -> bool:
    return bool(limits.requests_per_minute) or needs_settling(limits)


def needs_settling(limits: common_pb2.Limits) -> bool:
    """Limits a reservation charges at the worst case, which settling corrects."""
    return bool(
        limits.tokens_per_minute
        or limits.max_concurrency
        or limits.budget_tokens
        or limits.budget_micro_usd
    )


def _subject_keys(prefix: str, limits: common_pb2.Limits, at_s: float) -> list[str]:
    usd = shards.spent_usd_key(prefix, shards.period_id(period_of(limits), at_s))
    return [f"{prefix}:requests", f"{prefix}:tokens", f"{prefix}:leases", f"{prefix}:spent", usd]


def _subject_args(limits: common_pb2.Limits) -> list[int | str | bytes]:
    return [
        limits.requests_per_minute,
        limits.tokens_per_minute,
        limits.max_concurrency,
        limits.budget_tokens,
        limits.budget_micro_usd,
        shards.period_ttl_s(period_of(limits)),
    ]


class Layout:
    """Where an owner's state lives: the shard's keys, then the key's, then the tenant's."""

    def __init__(self, shard_count: int) -> None:
        self.shard_count = shard_count

    def shard(self, owner: Owner) -> int:
        return shards.shard_of(owner.tenant, owner.key_id, self.shard_count)

    def shard_keys(self, shard: int) -> list[str]:
        tag = shards.tag(shard)
        return [f"mg:{tag}:lease", f"mg:{tag}:open", shards.usage_stream(shard)]

    def call(self, owner: Owner, at_s: float, op: str, *extra: int | str | bytes) -> Call:
        shard = self.shard(owner)
        keys = [
            *self.shard_keys(shard),
            *_subject_keys(shards.key_prefix(shard, owner.key_id), owner.key_limits, at_s),
            *_subject_keys(shards.tenant_prefix(shard, owner.tenant), owner.tenant_limits, at_s),
        ]
        args = [op, *_subject_args(owner.key_limits), *_subject_args(owner.tenant_limits), *extra]
        return keys, args


def _tightest(
    pairs: list[tuple[int, int, int]],
) -> tuple[int, int, int]:
    """(limit, remaining, reset) of the subject with the least left; all zero if none is limited."""
    limited = [p for p in pairs if p[0] > 0]
    return min(limited, key=lambda p: p[1]) if limited else (0, 0, 0)


def decision(raw: list[int], owner: Owner, at_s: float) -> Decision:
    """The script's answer, with the key's and the tenant's state folded into one."""
    verdict, who = int(raw[0]), int(raw[1])
    subjects = list(
        zip((owner.key_limits, owner.tenant_limits), (raw[2:7], raw[7:12]), strict=True)
    )
    req = _tightest([(lim.requests_per_minute, int(p[0]), int(p[2])) for lim, p in subjects])
    tok = _tightest([(lim.tokens_per_minute, int(p[1]), int(p[3])) for lim, p in subjects])
    usd = _tightest(
        [
            (
                lim.budget_micro_usd,
                max(lim.budget_micro_usd - int(p[4]), 0),
                int(shards.period_reset_s(period_of(lim), at_s) * 1000),
            )
            for lim, p in subjects
        ]
    )
    state = common_pb2.RateLimitState(
        limit_requests=req[0],
        remaining_requests=req[1],
        reset_requests_ms=req[2],
        limit_tokens=tok[0],
        remaining_tokens=tok[1],
        reset_tokens_ms=tok[2],
        limit_budget_micro_usd=usd[0],
        remaining_budget_micro_usd=usd[1],
        reset_budget_ms=usd[2],
    )
    return Decision(Verdict(verdict), Subject(who), state, int(raw[12]))


# How long a call whose slot is migrating is asked again. Redis answers TRYAGAIN from
# the first key moved until the slot is handed over (SETSLOT NODE) to any script that
# names a key not there yet, so the wait is the whole migration of a slot: seconds for
# a crowded one. It stays under the edge's 5 s deadline for a quota call, so that a
# longer migration still ends in the fail-closed 503 with Retry-After, not a timeout.
MIGRATION_WAIT_S = 4.0
_MIGRATION_POLL_S = 0.02


def _migrating(result: Any) -> bool:
    """TRYAGAIN, or redis-py's redirections running out while a slot migrates."""
    if isinstance(result, TryAgainError):
        return True
    return isinstance(result, ClusterError) and "TTL exhausted" in str(result)


def _unreachable(result: Any) -> bool:
    return isinstance(result, ConnectionError | TimeoutError)


def _ran_nothing(result: Any) -> bool:
    """A call to send again: its master was unreachable, or its slot still migrating."""
    return _unreachable(result) or _migrating(result)


def _sorted_out(calls: Sequence[Call], results: Sequence[Any]) -> tuple[int, list[Call]]:
    """(refused, stranded) of pipelined settlements: errors Redis gave for good are
    counted and dropped; calls that ran nothing are kept, to be sent again (settling
    is idempotent), never counted as refused."""
    stranded = [c for c, r in zip(calls, results, strict=True) if _ran_nothing(r)]
    return sum(isinstance(r, Exception) for r in results) - len(stranded), stranded


def _slot(call: Call) -> int:
    """The hash slot of a call's keys (they share one tag)."""
    return key_slot(call[0][0].encode())


@dataclass(frozen=True, slots=True)
class Reserved:
    """A reservation's decision, and what became of the settlements it carried."""

    decision: Decision
    # Settlements Redis refused one by one (a key it cannot update).
    refused: int = 0
    # Settlements that ran nothing (a cluster master unreachable, a slot migrating):
    # to be sent again.
    stranded: list[Call] = field(default_factory=list)


def _raise_ran_nothing(results: Sequence[Any]) -> None:
    """A call that ran nothing (a cluster master that died mid-pipeline, a slot still
    migrating) fails the round trip, as a lost connection does on one server: the
    settlements are kept and sent again, never counted as refused."""
    for result in results:
        if _ran_nothing(result):
            raise result


class Buckets:
    def __init__(self, redis: Client, layout: Layout) -> None:
        self._redis = redis
        self._cluster = isinstance(redis, RedisCluster)
        self.layout = layout
        self._script = redis.register_script(_SCRIPT)
        self._sweep = redis.register_script(_SWEEP)

    def reserve_call(
        self,
        owner: Owner,
        at_s: float,
        tokens: int,
        micro_usd: int,
        lease_id: str,
        lease_ttl_ms: int,
        lapse_record: bytes,
    ) -> Call:
        return self.layout.call(
            owner, at_s, "reserve", tokens, micro_usd, lease_id, lease_ttl_ms, lapse_record
        )

    def settle_call(
        self,
        owner: Owner,
        at_s: float,
        lease_id: str,
        reserved: tuple[int, int],
        used: tuple[int, int],
        record: bytes,
    ) -> Call:
        """`reserved` and `used` are (tokens, micro-dollars)."""
        return self.layout.call(
            owner, at_s, "settle", reserved[0], reserved[1], lease_id, used[0], used[1], record
        )

    def record_call(self, owner: Owner, at_s: float, record: bytes) -> Call:
        """Buffer the record of a request admitted without a reservation (fail_open)."""
        return self.layout.call(owner, at_s, "record", 0, 0, "", 0, 0, record)

    async def reserve(
        self, owner: Owner, at_s: float, call: Call, settlements: Sequence[Call] = ()
    ) -> Reserved:
        """Apply `settlements` first, then decide, all in one round trip.

        One bad settlement (a key Redis cannot update) must not refuse the
        reservation that carried it, nor every later one that would carry it
        again: it is counted as refused. On Redis Cluster the settlements of
        other slots go in a pipeline of their own, at the same time, so that a
        master that is down (failing over) refuses only the requests whose
        state it holds; their settlements come back as `stranded`, to be sent
        again (settling is idempotent).
        """
        if not settlements:
            keys, args = call
            raw: list[int] = await self._call(self._script, keys, args)
            return Reserved(decision(raw, owner, at_s))
        if not self._cluster:
            *settled, decided = await self._pipelined([*settlements, call])
            if isinstance(decided, Exception):
                raise decided
            return Reserved(decision(decided, owner, at_s), *_sorted_out(settlements, settled))
        slot = _slot(call)
        here = [c for c in settlements if _slot(c) == slot]
        apart = [c for c in settlements if _slot(c) != slot]
        (*settled, decided), (refused, stranded) = await asyncio.gather(
            self._pipelined([*here, call]), self._settle_apart(apart)
        )
        if isinstance(decided, Exception):
            raise decided
        refused_here, stranded_here = _sorted_out(here, settled)
        return Reserved(
            decision(decided, owner, at_s), refused_here + refused, stranded_here + stranded
        )

    async def _settle_apart(self, calls: list[Call]) -> tuple[int, list[Call]]:
        """(refused, unreachable) of settlements sent on their own; errors never raise."""
        if not calls:
            return 0, []
        try:
            results = await self._pipelined(calls)
        except (RedisError, OSError):
            return 0, calls
        return _sorted_out(calls, results)

    async def settle_many(self, settlements: Sequence[Call]) -> int:
        """All of them in one pipelined round trip; returns how many Redis refused."""
        results = await self._pipelined(list(settlements))
        _raise_ran_nothing(results)
        return sum(isinstance(r, Exception) for r in results)

    async def peek(self, owner: Owner, at_s: float) -> Decision:
        keys, args = self.layout.call(owner, at_s, "peek")
        raw: list[int] = await self._call(self._script, keys, args)
        return decision(raw, owner, at_s)

    async def sweep(self, limit: int = 500) -> int:
        """Record every shard's lapsed leases (see sweep.lua); returns how many."""
        swept = 0
        for shard in range(self.layout.shard_count):
            keys = self.layout.shard_keys(shard)
            swept += int(await self._call(self._sweep, keys, [limit]))
        return swept

    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """One script call; while its slot migrates (TRYAGAIN), asked again for a moment."""
        deadline = time.monotonic() + MIGRATION_WAIT_S
        while True:
            try:
                return await script(keys=keys, args=args)
            except (TryAgainError, ClusterError) as exc:
                if not _migrating(exc) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(_MIGRATION_POLL_S)

    async def _pipelined(self, calls: list[Call]) -> list[Any]:
        """EVALSHA each call in one round trip; a call's error comes back in its place.

        redis-py's own pipelined scripts ask SCRIPT EXISTS before every batch (a
        second round trip); instead, when Redis has lost the script (a restart,
        a failover, SCRIPT FLUSH) it is loaded and the calls that found none are
        sent again: a NOSCRIPT call ran nothing. So are calls whose slot is
        migrating (TRYAGAIN ran nothing either), for MIGRATION_WAIT_S at most.
        A lost connection raises.
        """
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        loaded = False
        deadline = time.monotonic() + MIGRATION_WAIT_S
        while todo:
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args = calls[i]
                    pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
                answers: list[Any] = await pipe.execute(raise_on_error=False)
            for i, answer in zip(todo, answers, strict=True):
                results[i] = answer
            lost = [i for i in todo if isinstance(results[i], NoScriptError)]
            moving = [i for i in todo if _migrating(results[i])]
            todo = []
            if lost and not loaded:
                await self._redis.script_load(_SCRIPT)
                loaded = True
                todo += lost
            if moving and time.monotonic() < deadline:
                await asyncio.sleep(_MIGRATION_POLL_S)
                todo += moving
            todo.sort()
        return results
