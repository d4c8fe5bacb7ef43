"""`meshgate up` forks its Python services from one preloaded parent (meshgate/forkserver.py).

Each forked service must still look and behave like the exec'ed process it replaces:
the launcher's own child, in its own process group, with its command line. It must
also share the preloaded pages, which is the point of forking. A forkserver that dies
is started again, and the services it forked keep serving meanwhile.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import openai
import psutil
import pytest

from bench import procstat
from meshgate import forkserver
from tests.conftest import ROOT, RunningMesh, process_alive, subprocess_env

# A forked service shares tens of MB of the forkserver's heap (85-90 MB when this was
# written); an exec'ed one shares none of its anonymous memory.
MIN_SHARED_DIRTY_MB = 20


def _services(mesh: RunningMesh) -> dict[str, int]:
    """service name -> pid, for every `meshgate serve` process of the mesh."""
    found = {}
    for pid in procstat.descendants(mesh.proc.pid):
        argv = procstat.argv(pid)
        if "serve" in argv and process_alive(pid):
            found[argv[argv.index("serve") + 1]] = pid
    return found


def _forkservers(mesh: RunningMesh) -> list[int]:
    return [
        pid
        for pid in procstat.descendants(mesh.proc.pid)
        if "meshgate.forkserver" in procstat.argv(pid) and process_alive(pid)
    ]


def _shared_dirty_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Shared_Dirty:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no Shared_Dirty in /proc/{pid}/smaps_rollup")


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _chat(mesh: RunningMesh) -> str:
    with openai.OpenAI(base_url=mesh.base_url, api_key=mesh.api_key, max_retries=0) as client:
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
    return reply.choices[0].message.content or ""


def _answers(mesh: RunningMesh) -> bool:
    """Whether a chat succeeds now (a 503 while a restarted service comes up is not yet)."""
    try:
        return bool(_chat(mesh))
    except openai.APIError:
        return False


def test_services_are_the_launchers_forked_children(
    start_mesh: Callable[..., RunningMesh],
) -> None:
    mesh = start_mesh()
    services = _services(mesh)
    assert {"auth", "quota", "validation", "router", "edge", "ledger"} <= set(services)
    assert len(_forkservers(mesh)) == 1
    for name, pid in services.items():
        process = psutil.Process(pid)
        # The launcher waits for it and reads its exit code: it must be the launcher's child.
        assert process.ppid() == mesh.proc.pid, name
        assert os.getpgid(pid) == pid, name  # its own group: Ctrl-C reaches only the launcher
        argv = procstat.argv(pid)
        assert argv[1:] == ["-m", "meshgate", "serve", name, "--config", str(mesh.config_path)]
        assert _shared_dirty_mb(pid) >= MIN_SHARED_DIRTY_MB, (name, _shared_dirty_mb(pid))
    assert _chat(mesh)


def test_a_dead_forkserver_is_restarted_and_forks_again(
    start_mesh: Callable[..., RunningMesh],
) -> None:
    mesh = start_mesh()
    before = _services(mesh)
    (first,) = _forkservers(mesh)

    psutil.Process(first).kill()
    _wait_for(lambda: _forkservers(mesh) not in ([], [first]), 15, "no new forkserver")
    assert all(process_alive(pid) for pid in before.values())  # they are not its children
    assert _chat(mesh)

    psutil.Process(before["auth"]).kill()
    _wait_for(
        lambda: _services(mesh).get("auth", before["auth"]) != before["auth"],
        30,
        "auth was not started again",
    )
    again = _services(mesh)["auth"]
    assert psutil.Process(again).ppid() == mesh.proc.pid
    assert _shared_dirty_mb(again) >= MIN_SHARED_DIRTY_MB
    _wait_for(lambda: _answers(mesh), 30, "the mesh did not answer after the restart")

    # Both at once, in either order the supervision pass may find them.
    (second,) = _forkservers(mesh)
    quota = _services(mesh)["quota"]
    psutil.Process(quota).kill()
    psutil.Process(second).kill()
    _wait_for(
        lambda: (
            _services(mesh).get("quota", quota) != quota
            and _forkservers(mesh) not in ([], [second])
        ),
        30,
        "quota and the forkserver were not both started again",
    )
    _wait_for(lambda: _answers(mesh), 30, "the mesh did not answer after both restarts")
    assert mesh.proc.poll() is None
    assert "Traceback" not in mesh.stderr()


def _lone_forkserver() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A forkserver of our own that preloads nothing: (our end of its socket, it)."""
    ours, theirs = forkserver.pair()
    proc = subprocess.Popen(
        forkserver.command(theirs.fileno(), []),
        cwd=ROOT,
        env=subprocess_env({}),
        pass_fds=[theirs.fileno()],
        stderr=subprocess.PIPE,
    )
    theirs.close()
    return ours, proc


def test_the_forkserver_refuses_what_it_cannot_run() -> None:
    """A malformed request, or a command that is not meshgate's, gets an error reply;
    the forkserver keeps serving, and exits when the launcher hangs up."""
    ours, proc = _lone_forkserver()
    ours.settimeout(60)
    try:
        ours.send(b"not json")
        assert "bad request" in json.loads(ours.recv(forkserver.MAX_MESSAGE))["error"]
        with open(os.devnull, "wb") as sink:
            request = json.dumps({"argv": ["/bin/sh", "-c", "true"], "env": {}}).encode()
            socket.send_fds(ours, [request], [sink.fileno()])
        assert "not a meshgate command" in json.loads(ours.recv(forkserver.MAX_MESSAGE))["error"]
        request = json.dumps({"argv": [sys.executable, "-m", "meshgate"], "env": {}}).encode()
        ours.send(request)  # no stderr attached
        assert "bad request" in json.loads(ours.recv(forkserver.MAX_MESSAGE))["error"]
        assert proc.poll() is None
    finally:
        ours.close()
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None
    assert b"Traceback" not in proc.stderr.read()


def test_a_service_the_launcher_does_not_adopt_exits() -> None:
    """Forked by a parent that is not a subreaper, a service is never adopted by it: it
    gives up and exits instead of running as an orphan that nothing supervises."""
    ours, proc = _lone_forkserver()
    client = forkserver.Client(ours, timeout=60)
    read_end, write_end = os.pipe()
    try:
        forked = client.spawn(
            [sys.executable, "-m", "meshgate", "--help"], subprocess_env({}), write_end
        )
    finally:
        os.close(write_end)
        os.close(read_end)
    # Not our child: init (or another subreaper) has it; it must be gone within the wait.
    _wait_for(
        lambda: not process_alive(forked.pid),
        forkserver.ADOPT_TIMEOUT_S + 10,
        "an unadopted service kept running",
    )
    client.close()
    assert proc.wait(timeout=10) == 0


def test_distinct_pages_count_a_page_shared_by_a_fork_once() -> None:
    """bench/procstat.unique_resident_kib, the memory goal's figure: a child forked from a
    parent holding 64 MB shares those pages, so the two hold about 64 MB between them,
    though their RSS adds up to twice that."""
    script = (
        "import os, sys, time\n"
        "held = bytearray(os.urandom(64 << 20))\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60); os._exit(0)\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        pids = [parent.pid, *procstat.descendants(parent.pid)]
        assert len(pids) == 2
        unique = procstat.unique_resident_kib(pids)
        if unique is None:
            pytest.skip("page frame numbers are hidden: reading them needs CAP_SYS_ADMIN")
        rss = [psutil.Process(pid).memory_info().rss // 1024 for pid in pids]
        assert sum(rss) > 2 * 64 * 1024
        assert max(rss) <= unique < 0.7 * sum(rss), (unique, rss)
    finally:
        for pid in procstat.descendants(parent.pid):
            psutil.Process(pid).kill()
        parent.kill()
        parent.wait()


def test_orphans_the_launcher_adopts_are_reaped(start_mesh: Callable[..., RunningMesh]) -> None:
    """As the services' subreaper the launcher adopts every orphan below it. PostgreSQL's
    backends outlive a killed postmaster for a moment, then exit as the launcher's
    children: it must reap them, not leave them as zombies until the mesh stops."""
    mesh = start_mesh()
    (postmaster,) = [
        pid
        for pid in procstat.descendants(mesh.proc.pid)
        if procstat.process_label(pid) == "postgres" and "-D" in procstat.argv(pid)
    ]
    backends = [child.pid for child in psutil.Process(postmaster).children()]
    assert backends
    psutil.Process(postmaster).kill()

    def reaped() -> bool:
        return not any(psutil.pid_exists(pid) for pid in backends)

    _wait_for(reaped, 15, "the orphaned backends were left as zombies")
    _wait_for(lambda: _answers(mesh), 60, "no answer after PostgreSQL came back")
