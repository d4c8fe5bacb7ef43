"""The one way the mesh opens Redis: tight timeouts, and one quick retry on a fresh connection.

After a Redis restart every pooled connection is dead; the retry makes the
first call on each of them succeed instead of failing a request. Against a
Redis that is down or hung the retry costs one more timeout at most, so a
request still fails within `2 x redis.timeout_ms`.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, TimeoutError

from meshgate.config import RedisConfig


def connect(config: RedisConfig) -> Redis:
    timeout = config.timeout_ms / 1000
    return Redis.from_url(
        config.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries=1),
        retry_on_error=[ConnectionError, TimeoutError],
    )
