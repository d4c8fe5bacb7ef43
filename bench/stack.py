"""The systems under test, as child processes: a whole meshgate mesh, or the mock upstream.

The mesh is started exactly as a user would (`python -m meshgate up --config
FILE`) with production settings: auth, quota backed by the embedded Redis,
validation and routing all on. Only the ports (free ones, picked here) and the
key (a bench key whose limits are too high to trip) differ from the sample.

Every child asks the kernel for SIGTERM when the benchmark dies
(PR_SET_PDEATHSIG), and `meshgate up` forwards its own death to the services,
so even a `kill -9` of the benchmark leaves nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
UP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
SERVICE_NAMES = ("auth", "quota", "validation", "router", "engine")
# High enough that quota admits everything a 3-minute run can send, yet every
# request still runs the Redis token-bucket script (0 would mean "unlimited"
# and skip Redis, which is not how production keys are configured).
BENCH_RPM = 1_000_000_000
BENCH_TPM = 1_000_000_000_000


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: every socket stays bound until all are picked."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def child_env(workdir: Path | None = None) -> dict[str, str]:
    """Our environment minus MESHGATE_* and REDIS_URL, so that only the bench config counts."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_") and k != "REDIS_URL"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if workdir is not None:
        tmp = workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)  # Redis's --dir lands here and goes away with the workdir
    return env


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn: SIGTERM this child when the benchmark process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def write_config(
    workdir: Path,
    token_delay_ms: float,
    key: str,
    models: list[dict[str, Any]] | None = None,
    name: str = "meshgate",
    ledger: bool = True,
) -> Path:
    """The sample config on free loopback ports, with one bench key.

    `models` replaces the sample's catalog (e.g. models served by the mock over
    `kind: openai_http`); None keeps the sample's reference-engine models.
    `ledger` False turns usage recording off (no embedded PostgreSQL, no ledger).
    """
    sample = ROOT / "meshgate" / "sample.yaml"
    raw: dict[str, Any] = yaml.safe_load(sample.read_text())
    edge_port, *service_ports = free_ports(1 + len(SERVICE_NAMES))
    raw["edge"]["host"] = "127.0.0.1"
    raw["edge"]["port"] = edge_port
    raw["edge"]["metrics_port"] = 0  # two stacks may run at once: no fixed ports
    raw["admin"]["port"] = 0  # nor the admin listener, which the benchmark never calls
    services = raw.setdefault("services", {})
    for service, port in zip(SERVICE_NAMES, service_ports, strict=True):
        services[service] = {"host": "127.0.0.1", "port": port, "metrics_port": 0}
    services["engine"]["token_delay_ms"] = token_delay_ms
    raw["redis"]["url"] = ""  # the embedded redis-server, part of the measured tree
    # The embedded PostgreSQL and the ledger are part of the measured tree too.
    raw["ledger"] = {**raw.get("ledger", {}), "enabled": ledger, "database_url": ""}
    raw["keys"] = [{"name": "bench", "secret": key, "rpm": BENCH_RPM, "tpm": BENCH_TPM}]
    if models is not None:
        raw["models"] = models
    path = workdir / f"{name}-bench.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def openai_http_models(
    base_url: str,
    chat_model: str,
    embed_model: str,
    dimensions: int,
    upstream_chat: str = "mock",
    upstream_embed: str = "mock-embed",
) -> list[dict[str, Any]]:
    """A catalog whose chat and embeddings models are served by an OpenAI-compatible upstream.

    The catalog ids are the bench payload's model names, so that the very same
    request bodies go to the upstream directly and through meshgate.
    """
    return [
        {
            "id": chat_model,
            "category": "text",
            "context_length": 4096,
            "engines": [{"kind": "openai_http", "url": base_url, "model": upstream_chat}],
        },
        {
            "id": embed_model,
            "category": "embeddings",
            "context_length": 8192,
            "dimensions": dimensions,
            "engines": [{"kind": "openai_http", "url": base_url, "model": upstream_embed}],
        },
    ]


def _pump(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    # Drains stdout for the child's whole life, so that it never blocks on a full pipe.
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip("\n"))
    lines.put(None)


class Child:
    """A child process whose stdout is read line by line and stderr goes to a file."""

    def __init__(
        self,
        argv: list[str],
        workdir: Path,
        name: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.stderr_path = workdir / f"{name}.stderr"
        self.stdout_lines: list[str] = []
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd or ROOT,
                env=env if env is not None else child_env(workdir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                preexec_fn=die_with_parent(),
                start_new_session=True,  # Ctrl-C reaches only us; we stop the child in order
            )
        assert self.proc.stdout is not None
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(self.proc.stdout, self._lines), daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with `prefix`; RuntimeError if the child dies first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"{self.name} printed no {prefix!r} within {timeout:.0f}s\n{self.tail()}"
                ) from None
            if line is None:
                self.proc.wait()
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")
            self.stdout_lines.append(line)
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()

    def output(self) -> list[str]:
        """Every stdout line so far (for a child that reports there, not on stderr)."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return self.stdout_lines
            if line is not None:
                self.stdout_lines.append(line)

    def tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; SIGKILL the whole session if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


class MeshProcess:
    """`meshgate up` on a bench config; `processes()` labels every pid of its tree."""

    def __init__(
        self,
        workdir: Path,
        token_delay_ms: float,
        models: list[dict[str, Any]] | None = None,
        name: str = "meshgate",
        ledger: bool = True,
    ) -> None:
        self.key = f"sk-bench-{secrets.token_hex(12)}"
        self.config_path = write_config(workdir, token_delay_ms, self.key, models, name, ledger)
        config = yaml.safe_load(self.config_path.read_text())
        engine = config["services"]["engine"]
        self.engine_target = f"{engine['host']}:{engine['port']}"
        argv = [sys.executable, "-m", "meshgate", "up", "--config", str(self.config_path)]
        self.child = Child(argv, workdir, f"{name}-up")
        try:
            self.base_url = self.child.wait_for_line("meshgate is up: ", UP_TIMEOUT_S)
            banner_key = self.child.wait_for_line("api key: ", 5.0)
        except RuntimeError:
            self.child.stop()
            raise
        if banner_key != self.key:
            self.child.stop()
            raise RuntimeError("meshgate up announced a different key than the bench config's")

    @property
    def pid(self) -> int:
        return self.child.pid

    def processes(self) -> dict[int, str]:
        """pid -> label for the launcher and all its descendants (Redis included)."""
        from bench.procstat import descendants, process_label

        pids = [self.pid, *descendants(self.pid)]
        return {pid: process_label(pid) for pid in pids}

    def engine_pid(self) -> int | None:
        return next((pid for pid, label in self.processes().items() if label == "engine"), None)

    def stop(self) -> int:
        return self.child.stop()


class MockProcess:
    """bench/mock_openai.py as a child process."""

    def __init__(
        self,
        workdir: Path,
        port: int = 0,
        token_delay_ms: float = 0.0,
        chunks: int = 16,
        name: str = "mock-openai",
    ) -> None:
        argv = [
            sys.executable,
            str(ROOT / "bench" / "mock_openai.py"),
            "--port",
            str(port),
            "--token-delay-ms",
            str(token_delay_ms),
            "--chunks",
            str(chunks),
        ]
        self.child = Child(argv, workdir, name)
        try:
            self.base_url = self.child.wait_for_line("mock-openai is up: ", 30.0)
        except RuntimeError:
            self.child.stop()
            raise

    @property
    def pid(self) -> int:
        return self.child.pid

    def stop(self) -> int:
        return self.child.stop()
