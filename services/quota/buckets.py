"""Requests-per-minute and tokens-per-minute buckets in Redis (see buckets.lua).

Each decision is one atomic script call. redis-py's `Script` sends EVALSHA and
falls back to EVAL when Redis has lost the script (a restart or SCRIPT FLUSH).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from meshgate.v1 import common_pb2

_SCRIPT = (Path(__file__).with_name("buckets.lua")).read_text()


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    state: common_pb2.RateLimitState
    # Milliseconds until the request would fit; -1 when it never can.
    wait_ms: int
    # Which bucket denied: "requests" or "tokens"; empty when admitted.
    denied_by: str


def _bucket_keys(key_id: str) -> list[str]:
    tag = "{" + key_id + "}"
    return [f"mg:{tag}:requests", f"mg:{tag}:tokens"]


class Buckets:
    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_SCRIPT)

    async def _call(self, key_id: str, *args: int | str) -> list[int]:
        result: list[int] = await self._script(keys=_bucket_keys(key_id), args=list(args))
        return result

    @staticmethod
    def _decision(limits: common_pb2.Limits, raw: list[int]) -> Decision:
        admitted, rem_req, rem_tok, wait_req, wait_tok, reset_req, reset_tok = (int(x) for x in raw)
        state = common_pb2.RateLimitState(
            limit_requests=limits.requests_per_minute,
            limit_tokens=limits.tokens_per_minute,
            remaining_requests=rem_req,
            remaining_tokens=rem_tok,
            reset_requests_ms=reset_req,
            reset_tokens_ms=reset_tok,
        )
        if admitted:
            return Decision(True, state, 0, "")
        if wait_tok == -1:
            return Decision(False, state, -1, "tokens")
        denied_by = "requests" if wait_req >= wait_tok else "tokens"
        return Decision(False, state, max(wait_req, wait_tok), denied_by)

    async def reserve(self, key_id: str, limits: common_pb2.Limits, tokens: int) -> Decision:
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        raw = await self._call(key_id, "reserve", rpm, tpm, tokens)
        return self._decision(limits, raw)

    async def settle(
        self, key_id: str, limits: common_pb2.Limits, reserved: int, used: int
    ) -> None:
        if limits.tokens_per_minute > 0 and reserved != used:
            await self._call(
                key_id,
                "settle",
                limits.requests_per_minute,
                limits.tokens_per_minute,
                reserved,
                used,
            )
