"""Where a key's live state lives in Redis: one hash tag per shard (docs/ledger.md).

A key's buckets, its tenant's buckets, and the shard's usage buffer must change
in one atomic script, and on Redis Cluster a script may touch one hash slot
only. So the tag is not the key id but a shard derived from the tenant (or,
for a key without one, from the key id): every key of a tenant, the tenant
itself, and the stream its records go to share `{mg<N>}`. `quota.shards`
fixes N's range for the whole mesh; the ledger reads each shard's stream.
"""

from __future__ import annotations

import calendar
import time
import zlib

# The consumer group every ledger replica joins on each shard's stream.
LEDGER_GROUP = "ledger"
# The stream entry's one field: a serialized meshgate.v1.UsageRecord.
RECORD_FIELD = b"r"


def shard_of(tenant: str, key_id: str, shards: int) -> int:
    """A tenant's keys all land in the tenant's shard; a key without one, in its own."""
    owner = ("t:" + tenant) if tenant else ("k:" + key_id)
    return zlib.crc32(owner.encode()) % shards


def tag(shard: int) -> str:
    return "{mg" + str(shard) + "}"


def usage_stream(shard: int) -> str:
    """The shard's buffer of settled records, read by the ledger's consumer group."""
    return f"mg:{tag(shard)}:usage"


def key_prefix(shard: int, key_id: str) -> str:
    """A key's state: `<prefix>:requests`, `:tokens`, `:leases`, `:spent` (tokens), `:usd:<period>`."""
    return f"mg:{tag(shard)}:k:{key_id}"


def tenant_prefix(shard: int, tenant: str) -> str:
    """A tenant's state, laid out like a key's, in the same shard as its keys."""
    return f"mg:{tag(shard)}:t:{tenant}"


def spent_usd_key(prefix: str, period: str) -> str:
    """Micro-dollars spent in one budget period (`period_id`), an integer counter."""
    return f"{prefix}:usd:{period}"


def period_id(period: str, unix_s: float) -> str:
    """The budget period a moment falls in, on the UTC calendar: `total`, `d2026-12-01`, `m2026-12`.

    The period is taken from the request's admission time, so a request
    admitted before midnight and settled after it corrects the day it was charged to.
    """
    if period == "day":
        return time.strftime("d%Y-%m-%d", time.gmtime(unix_s))
    if period == "month":
        return time.strftime("m%Y-%m", time.gmtime(unix_s))
    return "total"


def period_reset_s(period: str, unix_s: float) -> float:
    """Seconds until the period after the one `unix_s` falls in; 0 for a total budget."""
    day = 86400
    if period == "day":
        return day - unix_s % day
    if period == "month":
        t = time.gmtime(unix_s)
        year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        start = calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))
        return start - unix_s
    return 0.0


def period_ttl_s(period: str) -> int:
    """How long a period's counter outlives the period (0: forever), so old counters go away."""
    return {"day": 3 * 86400, "month": 70 * 86400}.get(period, 0)
