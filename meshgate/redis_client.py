"""The one way the mesh opens Redis: one server, a Redis Cluster, or a master named by Sentinel.

Tight timeouts, and one quick retry on a fresh connection: after a Redis restart
(or a failover) every pooled connection is dead, and the retry makes the first
call on each of them succeed instead of failing a request. Against a Redis that
is down or hung the retry costs one more timeout at most, so a request still
fails within a few `redis.timeout_ms`.

Which kind of Redis (`redis.mode`):
- `sentinel`: a `redis+sentinel://` URL or `redis.sentinel` settings. Every new
  connection asks a sentinel for the current master, so a failover is followed
  as soon as a sentinel names the promoted replica.
- `cluster`: redis-py's `RedisCluster`, which follows MOVED and ASK replies and
  refreshes its slot map after a connection error (a master that died). Every
  script and pipelined command names keys of one hash slot (`meshgate/shards.py`).
- `auto` (the default) asks the server: `INFO cluster` says `cluster_enabled:1`
  on a cluster node. Services wait for that answer at startup (`wait=True`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from meshgate.config import SENTINEL_SCHEME, RedisConfig, SentinelConfig, parse_sentinel_url

log = logging.getLogger("meshgate.redis")

# Every user of Redis holds one of these; both speak the same commands.
Client: TypeAlias = Redis | RedisCluster

# Connections one client may hold at once (per node on a cluster). redis-py's default
# is 100, past which a command fails with MaxConnectionsError at once: a burst of a few
# hundred requests (2,000 streams opened in 3 s, a batch of 64 reservations meeting the
# previous one) met it as 503s. A standalone client waits up to its timeout for a free
# connection instead; the cluster client cannot wait, so it gets the same room.
POOL_CONNECTIONS = 1024

# redis-py's asyncio connections pack every command in Python: 20 µs for one reservation's
# EVALSHA, about a tenth of quota's CPU under load. Its sync connections use hiredis's C
# packer (3 µs), which writes the same RESP bytes. The clients of all three kinds (one
# server, Sentinel, Cluster) make their connections from AbstractConnection, so the C
# packer is put there, once, for every connection of the process.
_HIREDIS = HiredisRespSerializer()


def _pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
    return _HIREDIS.pack(*args)


AbstractConnection.pack_command = _pack_command  # type: ignore[method-assign]

# How often a service that waits for Redis at startup asks again, and logs.
_PROBE_EVERY_S = 0.5
_LOG_EVERY_S = 10.0


def sentinel_settings(config: RedisConfig) -> SentinelConfig | None:
    """The sentinel settings, from a redis+sentinel:// URL or `redis.sentinel`; None if neither."""
    if config.url.startswith(SENTINEL_SCHEME + "://"):
        return parse_sentinel_url(config.url)
    if config.sentinel.sentinels or config.mode == "sentinel":
        return config.sentinel
    return None


def _host_port(item: str) -> tuple[str, int]:
    host, _, port = item.rpartition(":")
    return host.strip("[]"), int(port)


def _retry() -> Retry:
    return Retry(NoBackoff(), retries=1)


@dataclass(frozen=True, slots=True)
class Opened:
    """A client and how it was reached, so that a subscriber can be opened the same way."""

    client: Client
    mode: str
    sentinel: Sentinel | None = None
    master: str = ""


def _standalone(config: RedisConfig, timeout: float) -> Redis:
    pool = BlockingConnectionPool.from_url(
        config.url,
        max_connections=POOL_CONNECTIONS,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_retry(),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool, as from_url's do
    return client


def _cluster(config: RedisConfig, timeout: float) -> RedisCluster:
    return RedisCluster.from_url(
        config.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # The cluster client's own retries refresh the slot map between attempts.
        retry=_retry(),
        # A MOVED reply patches that slot's owner. Left at redis-py's default (5), every
        # fifth MOVED would instead aclose() the client to learn the whole map again,
        # cutting the connections other requests are using that moment (RuntimeError,
        # "Connection closed by server"): under traffic, a resharding became 503s.
        # A failover still relearns the map, on the connection error it causes.
        reinitialize_steps=0,
        max_connections=POOL_CONNECTIONS,
    )


def _sentinel(settings: SentinelConfig, timeout: float) -> tuple[Sentinel, Redis]:
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if settings.sentinel_password:
        sentinel_kwargs["password"] = settings.sentinel_password
    sentinel = Sentinel(
        [_host_port(s) for s in settings.sentinels],
        sentinel_kwargs=sentinel_kwargs,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        password=settings.password or None,
        db=settings.db,
    )
    master = sentinel.master_for(
        settings.master,
        max_connections=POOL_CONNECTIONS,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_retry(),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    return sentinel, master


async def probe_mode(config: RedisConfig) -> str:
    """`cluster` or `standalone`, as the server says (INFO cluster); raises RedisError if unreachable."""
    timeout = config.timeout_ms / 1000
    probe = Redis.from_url(config.url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    return "cluster" if int(info.get("cluster_enabled", 0)) else "standalone"


async def _mode(config: RedisConfig, wait: bool) -> str:
    if sentinel_settings(config) is not None:
        return "sentinel"
    if config.mode != "auto":
        return config.mode
    logged = 0.0
    while True:
        try:
            return await probe_mode(config)
        except (RedisError, OSError) as exc:
            if not wait:
                raise
            if time.monotonic() - logged >= _LOG_EVERY_S:
                logged = time.monotonic()
                log.warning(
                    "waiting for redis to say whether it is a cluster (set redis.mode to skip)",
                    extra={"error": type(exc).__name__},
                )
            await asyncio.sleep(_PROBE_EVERY_S)


async def open_redis(config: RedisConfig, *, wait: bool = False) -> Opened:
    """The mesh's client for `config`; `wait` retries the mode probe until Redis answers."""
    timeout = config.timeout_ms / 1000
    mode = await _mode(config, wait)
    if mode == "sentinel":
        settings = sentinel_settings(config) or config.sentinel
        sentinel, master = _sentinel(settings, timeout)
        return Opened(master, mode, sentinel, settings.master)
    if mode == "cluster":
        cluster = _cluster(config, timeout)
        if wait:
            await _initialize(cluster)
        else:
            await cluster.initialize()
        return Opened(cluster, mode)
    return Opened(_standalone(config, timeout), mode)


async def _initialize(cluster: RedisCluster) -> None:
    """Learn the slot map before any concurrent use (redis-py needs it), waiting for the cluster."""
    logged = 0.0
    while True:
        try:
            await cluster.initialize()
            return
        except (RedisError, OSError) as exc:
            if time.monotonic() - logged >= _LOG_EVERY_S:
                logged = time.monotonic()
                log.warning("waiting for the redis cluster", extra={"error": type(exc).__name__})
            await asyncio.sleep(_PROBE_EVERY_S)


async def open_client(config: RedisConfig, *, wait: bool = False) -> Client:
    """The client alone (see `open_redis`)."""
    return (await open_redis(config, wait=wait)).client


def connect(config: RedisConfig) -> Redis:
    """A client of one Redis server, without asking what it is (`redis.mode: standalone`)."""
    return _standalone(config, config.timeout_ms / 1000)


class Subscribers:
    """Connections for SUBSCRIBE, which block on reads and so get no read timeout.

    Classic PUBLISH reaches subscribers on every node of a cluster and every
    replica of a master, so a cluster subscriber may sit on any node: each new
    one takes the next node the cluster client knows, so a dead node is left
    behind. Under Sentinel each connection goes to the master a sentinel names.
    """

    def __init__(self, opened: Opened, config: RedisConfig) -> None:
        self._opened = opened
        self._config = config
        self._turn = itertools.count()

    def open(self) -> Redis:
        timeout = self._config.timeout_ms / 1000
        opened = self._opened
        if opened.sentinel is not None:
            return opened.sentinel.master_for(opened.master, socket_connect_timeout=timeout)
        if isinstance(opened.client, RedisCluster):
            nodes = opened.client.get_nodes()
            if nodes:
                node = nodes[next(self._turn) % len(nodes)]
                kwargs = opened.client.get_connection_kwargs()
                return Redis(
                    host=node.host,
                    port=int(node.port),
                    username=kwargs.get("username"),
                    password=kwargs.get("password"),
                    socket_connect_timeout=timeout,
                )
        return Redis.from_url(self._config.url, socket_connect_timeout=timeout)
