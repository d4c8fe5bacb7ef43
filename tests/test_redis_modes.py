"""Which Redis the mesh opens: one server, a cluster (asked with INFO cluster) or a Sentinel
master, and the settings that name them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshgate import redis_client
from meshgate.config import (
    ConfigError,
    RedisConfig,
    SentinelConfig,
    load_config,
    parse_sentinel_url,
)
from tests.support import RedisServer


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://10.0.0.1:26379/mymaster",
            SentinelConfig(master="mymaster", sentinels=("10.0.0.1:26379",)),
        ),
        (
            "redis+sentinel://:s%40cret@a:26379,b:26380,c:26381/cache/2",
            SentinelConfig(
                master="cache", sentinels=("a:26379", "b:26380", "c:26381"), password="s@cret", db=2
            ),
        ),
    ],
)
def test_sentinel_urls(url: str, expected: SentinelConfig) -> None:
    assert parse_sentinel_url(url) == expected
    assert redis_client.sentinel_settings(RedisConfig(url=url)) == expected


@pytest.mark.parametrize(
    ("redis", "message"),
    [
        ({"url": "redis+sentinel://a:26379"}, "redis.url"),
        ({"url": "redis+sentinel://a:26379/m/x"}, "redis.url"),
        ({"url": "redis+sentinel://a/m"}, "redis.url"),
        ({"url": "http://a:6379"}, "redis.url"),
        ({"mode": "sharded"}, "redis.mode"),
        ({"mode": "sentinel"}, "redis: Value error, mode sentinel needs"),
        ({"sentinel": {"sentinels": ["a:1"]}}, "sentinel.master"),
        ({"sentinel": {"master": "m", "sentinels": ["nohost"]}}, "redis.sentinel.sentinels"),
    ],
)
def test_bad_redis_settings_name_the_key(
    tmp_path: Path, redis: dict[str, Any], message: str
) -> None:
    path = tmp_path / "meshgate.yaml"
    path.write_text(yaml.safe_dump({"extends": "sample", "redis": redis}))
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_sentinel_settings_need_no_url(tmp_path: Path) -> None:
    path = tmp_path / "meshgate.yaml"
    settings = {"master": "m", "sentinels": ["127.0.0.1:26379"], "password": "pw"}
    path.write_text(yaml.safe_dump({"extends": "sample", "redis": {"sentinel": settings}}))
    config = load_config(path, environ={})
    assert config.redis.configured
    assert redis_client.sentinel_settings(config.redis) == SentinelConfig(**settings)


def test_a_single_server_is_told_apart_from_a_cluster() -> None:
    server = RedisServer().start()
    config = RedisConfig(url=server.url)

    async def probe() -> tuple[str, str]:
        opened = await redis_client.open_redis(config)
        try:
            await opened.client.set("mg:probe", "1")
        finally:
            await opened.client.aclose()
        return await redis_client.probe_mode(config), opened.mode

    try:
        assert asyncio.run(probe()) == ("standalone", "standalone")
    finally:
        server.kill()


def test_an_unreachable_redis_fails_the_probe_at_once() -> None:
    config = RedisConfig(url="redis://127.0.0.1:1/0")
    with pytest.raises(redis_client.RedisError):
        asyncio.run(redis_client.open_redis(config))


def test_a_burst_of_commands_waits_for_connections_rather_than_failing() -> None:
    """redis-py's default pool refuses its 101st concurrent command (MaxConnectionsError),
    which a burst of requests at quota once met as 503s."""
    server = RedisServer().start()
    config = RedisConfig(url=server.url)

    async def burst() -> int:
        opened = await redis_client.open_redis(config)
        try:
            # BLPOP holds its connection for a moment, so the burst needs many at once.
            answers = await asyncio.gather(
                *(opened.client.blpop([f"mg:burst:{i}"], timeout=0.05) for i in range(300))
            )
        finally:
            await opened.client.aclose()
        return len(answers)

    try:
        assert asyncio.run(burst()) == 300
    finally:
        server.kill()


def test_commands_are_packed_by_hiredis_into_the_bytes_redis_py_would_send() -> None:
    """The C packer replaces redis-py's Python one for speed only: same RESP on the wire,
    and the values a script call carries come back from a real Redis unchanged."""
    from redis.asyncio.connection import Connection
    from redis.connection import PythonRespSerializer

    command = ("EVALSHA", "a" * 40, 2, "mg:{k}:rpm", "mg:{k}:tpm", 1.5, -7, b"\x00\xff", "é")
    connection = Connection()
    python = PythonRespSerializer(connection._buffer_cutoff, connection.encoder.encode)
    assert b"".join(connection.pack_command(*command)) == b"".join(python.pack(*command))
    assert connection.pack_command.__func__ is redis_client._pack_command  # type: ignore[attr-defined]

    server = RedisServer().start()

    async def echo() -> list[Any]:
        opened = await redis_client.open_redis(RedisConfig(url=server.url))
        try:
            script = "return {ARGV[1], ARGV[2], ARGV[3], ARGV[4], KEYS[1]}"
            return list(await opened.client.eval(script, 1, "k:é", 1.5, -7, b"\x00\xff", "é"))
        finally:
            await opened.client.aclose()

    try:
        assert asyncio.run(echo()) == [b"1.5", b"-7", b"\x00\xff", "é".encode(), "k:é".encode()]
    finally:
        server.kill()
