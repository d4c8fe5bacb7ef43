"""`meshgate up` and the CLI: the banner, clean shutdown, no orphans, clear startup errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import yaml

from bench.procstat import descendants
from meshgate.cli import main
from tests.conftest import (
    ROOT,
    RunningMesh,
    free_ports,
    meshgate_cmd,
    process_alive,
    processes_mentioning,
    subprocess_env,
    wait_until_gone,
    write_config,
)


def run_cli(
    *args: str, tmp: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    extra = {"TMPDIR": str(tmp)} if tmp is not None else {}
    return subprocess.run(
        meshgate_cmd(*args),
        cwd=ROOT,
        env=subprocess_env(extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def leftovers(workdir: Path, timeout: float = 5.0) -> list[str]:
    """Processes of the mesh in `workdir` still alive after `timeout` seconds."""
    alive = wait_until_gone(processes_mentioning(f"{workdir}/"), timeout)
    return [f"{pid}: {cmdline(pid)}" for pid in alive]


def mesh_children(running: RunningMesh) -> dict[int, str]:
    kids = {pid: cmdline(pid) for pid in descendants(running.proc.pid)}
    for name in ("auth", "quota", "validation", "router", "engine", "edge"):
        assert any(f" serve {name} " in line for line in kids.values()), (name, kids)
    assert any("redis-server" in line for line in kids.values()), kids
    return kids


# ------------------------------------------------------------ the banner ----


def test_up_prints_base_url_and_key(mesh: RunningMesh, http: httpx.Client) -> None:
    assert mesh.base_url == f"http://127.0.0.1:{mesh.config.edge.port}/v1"
    assert mesh.origin == f"http://127.0.0.1:{mesh.config.edge.port}"
    assert mesh.api_key == mesh.config.keys[0].secret
    assert any(line.startswith("try: curl ") for line in mesh.stdout_lines), mesh.stdout_lines

    reply = http.get("/v1/models", headers={"Authorization": f"Bearer {mesh.api_key}"})
    assert reply.status_code == 200, reply.text
    assert {m["id"] for m in reply.json()["data"]} == {m.id for m in mesh.config.models}


def test_sdk_works_against_the_printed_url(client: openai.OpenAI, mesh: RunningMesh) -> None:
    assert {m.id for m in client.models.list()} == {m.id for m in mesh.config.models}


# -------------------------------------------------------------- shutdown ----


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_every_child(start_mesh: Callable[..., RunningMesh], sig: int) -> None:
    running = start_mesh()
    kids = mesh_children(running)

    started = time.monotonic()
    assert running.stop(sig) == 0, running.output()
    assert time.monotonic() - started < 12

    # The launcher reaps its children before it exits: nothing may be left, not even a zombie.
    still = [f"{pid}: {kids[pid]}" for pid in kids if process_alive(pid)]
    assert not still
    assert not leftovers(running.workdir, timeout=0)
    assert "Traceback" not in running.stderr()


def test_sigkill_of_the_launcher_leaves_no_child(start_mesh: Callable[..., RunningMesh]) -> None:
    running = start_mesh()
    kids = mesh_children(running)

    running.proc.kill()
    running.proc.wait()

    alive = wait_until_gone(list(kids), timeout=10)
    assert not [f"{pid}: {kids[pid]}" for pid in alive]
    assert not leftovers(running.workdir, timeout=0)


# ---------------------------------------------------------- startup errors ----


def test_bad_config_names_the_key_path(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    raw["models"][0]["engines"][0]["weight"] = 0
    path.write_text(yaml.safe_dump(raw))

    started = time.monotonic()
    result = run_cli("up", "--config", str(path), tmp=tmp_path, timeout=30)

    assert result.returncode != 0
    assert time.monotonic() - started < 10
    assert "models[0].engines[0].weight" in result.stderr
    assert result.stderr.startswith("meshgate: ")
    assert "Traceback" not in result.stderr + result.stdout
    assert "meshgate is up" not in result.stdout
    assert not leftovers(tmp_path, timeout=0)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("up", "--config", str(tmp_path / "nope.yaml"), tmp=tmp_path, timeout=30)
    assert result.returncode == 2
    assert "cannot read config" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_names_the_service(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    quota_port = yaml.safe_load(path.read_text())["services"]["quota"]["port"]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", quota_port))
        squatter.listen()
        result = run_cli("up", "--config", str(path), tmp=tmp_path)

    assert result.returncode != 0
    assert "quota" in result.stderr
    assert str(quota_port) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not leftovers(tmp_path)


def test_metrics_port_in_use_names_the_service(tmp_path: Path) -> None:
    (metrics_port,) = free_ports(1)
    path = write_config(tmp_path, {"services__router__metrics_port": metrics_port})
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", metrics_port))
        squatter.listen()
        result = run_cli("up", "--config", str(path), tmp=tmp_path)

    assert result.returncode != 0
    assert f"meshgate: router cannot start: metrics port {metrics_port}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not leftovers(tmp_path)


def test_a_metrics_port_shared_with_a_listener_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    quota_port = yaml.safe_load(path.read_text())["services"]["quota"]["port"]
    raw = yaml.safe_load(path.read_text())
    raw["edge"]["metrics_port"] = quota_port
    path.write_text(yaml.safe_dump(raw))
    result = run_cli("up", "--config", str(path), tmp=tmp_path)

    assert result.returncode != 0
    assert f"edge uses metrics port {quota_port}, which quota uses too" in result.stderr
    assert not leftovers(tmp_path)


def test_a_child_that_cannot_start_stops_the_rest(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is never a local address: the router's bind fails in the child.
    path = write_config(tmp_path, {"services__router__host": "192.0.2.1"})
    started = time.monotonic()
    result = run_cli("up", "--config", str(path), tmp=tmp_path)

    assert result.returncode != 0
    assert time.monotonic() - started < 35
    assert "meshgate: router " in result.stderr
    assert "meshgate is up" not in result.stdout
    assert not leftovers(tmp_path)


# -------------------------------------------------------------------- CLI ----


def test_serve_bogus_exits_2() -> None:
    result = run_cli("serve", "bogus", timeout=30)
    assert result.returncode == 2
    assert "invalid choice: 'bogus'" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("edge: {port: -1}\n")
    result = run_cli("serve", "auth", "--config", str(path), timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("meshgate: ")
    assert "edge.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_taken_metrics_port_names_it(tmp_path: Path) -> None:
    (metrics_port,) = free_ports(1)
    path = write_config(tmp_path, {"services__validation__metrics_port": metrics_port})
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", metrics_port))
        squatter.listen()
        result = run_cli("serve", "validation", "--config", str(path), timeout=60)
    assert result.returncode != 0
    assert f"meshgate validation: cannot serve metrics on 127.0.0.1:{metrics_port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_need_redis(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("MESHGATE_REDIS__URL", raising=False)
    assert main(["keys", "list"]) == 1
    assert "REDIS_URL" in capsys.readouterr().err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("up", "serve", "keys", "tenants", "usage"):
        assert command in out
    assert main(["keys", "--help"]) == 0
    out = capsys.readouterr().out
    for action in ("create", "list", "update", "revoke"):
        assert action in out
    assert main(["tenants", "--help"]) == 0
    out = capsys.readouterr().out
    for action in ("create", "list", "update"):
        assert action in out
