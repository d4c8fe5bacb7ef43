"""The CLI as a client of the running mesh, errors' doc_url at the dashboard, side-by-side meshes.

`meshgate up` leaves a runtime file; `meshgate keys|tenants|usage` find it and
go through the admin API (so changes land in the audit log), with no
environment variable. `--url` and an admin key pick a mesh explicitly. Two
meshes on the sample's defaults run side by side, since internal services get
free loopback ports.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from admin.client import AdminClient, target
from meshgate import runtime
from meshgate.config import SAMPLE_CONFIG, Config, ConfigError, DocsConfig, load_config
from meshgate.launcher import free_local_ports
from services.auth.admin import AdminError
from tests.conftest import (
    ROOT,
    RunningMesh,
    free_ports,
    launch_mesh,
    meshgate_cmd,
    subprocess_env,
)

CHAT = "meshgate/reference-pro"


def _defaults_config(directory: Path) -> Path:
    """The sample as a user has it: no `services:` block, only the edge's port made free."""
    raw: dict[str, Any] = yaml.safe_load(SAMPLE_CONFIG.read_text())
    assert "services" not in raw, "the sample fixes no service port"
    (raw["edge"]["port"],) = free_ports(1)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "meshgate.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli(
    runtime_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`meshgate ...` as a user runs it: no REDIS_URL, no MESHGATE_* but the runtime dir."""
    return subprocess.run(
        meshgate_cmd(*args),
        cwd=ROOT,
        env={**subprocess_env(), "MESHGATE_RUNTIME_DIR": str(runtime_dir), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def two_meshes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, RunningMesh, RunningMesh]]:
    runtime_dir = tmp_path_factory.mktemp("runtime")
    env = {"MESHGATE_RUNTIME_DIR": str(runtime_dir)}
    meshes = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path_factory.mktemp(f"mesh-{name}")
            meshes.append(launch_mesh(workdir, env=env, config_path=_defaults_config(workdir)))
        yield runtime_dir, meshes[0], meshes[1]
    finally:
        for mesh in meshes:
            mesh.stop()


def _client(mesh: RunningMesh, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=mesh.base_url, api_key=key, max_retries=0)


def _chat(mesh: RunningMesh, key: str) -> None:
    _client(mesh, key).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )


def _error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert isinstance(body, dict)
    return dict(body["error"])


def test_two_meshes_on_the_defaults_run_side_by_side(
    two_meshes: tuple[Path, RunningMesh, RunningMesh],
) -> None:
    runtime_dir, a, b = two_meshes
    assert a.admin_origin != b.admin_origin
    for mesh in (a, b):
        _chat(mesh, mesh.api_key)
    files = sorted(runtime_dir.glob("up-*.json"))
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, "the file holds an admin secret"
    assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700
    described = {json.loads(p.read_text())["admin_url"] for p in files}
    assert described == {a.admin_origin, b.admin_origin}


def test_the_cli_asks_which_mesh_when_two_run(
    two_meshes: tuple[Path, RunningMesh, RunningMesh],
) -> None:
    runtime_dir, a, _ = two_meshes
    done = cli(runtime_dir, "keys", "list")
    assert done.returncode == 1
    assert "2 local meshes are running" in done.stderr and "--url" in done.stderr
    assert a.admin_origin in done.stderr and "Traceback" not in done.stderr


def test_config_or_url_picks_the_mesh(two_meshes: tuple[Path, RunningMesh, RunningMesh]) -> None:
    runtime_dir, a, b = two_meshes
    made = cli(runtime_dir, "keys", "--config", str(a.config_path), "create", "--name", "for-a")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    _chat(a, secret)
    with pytest.raises(openai.AuthenticationError):
        _chat(b, secret)

    env = {"MESHGATE_ADMIN_KEY": b.admin_key}
    made = cli(runtime_dir, "keys", "create", "--name", "for-b", "--url", b.admin_origin, env=env)
    assert made.returncode == 0, made.stderr
    _chat(b, made.stdout.strip())
    with pytest.raises(openai.AuthenticationError):
        _chat(a, made.stdout.strip())

    no_key = cli(runtime_dir, "keys", "list", "--url", b.admin_origin)
    assert no_key.returncode == 1 and "needs an admin key" in no_key.stderr
    api_key = cli(runtime_dir, "keys", "list", "--url", b.admin_origin, "--admin-key", b.api_key)
    assert api_key.returncode == 1 and "[403]" in api_key.stderr


def test_with_one_mesh_the_cli_needs_nothing(
    two_meshes: tuple[Path, RunningMesh, RunningMesh],
) -> None:
    runtime_dir, a, b = two_meshes
    assert b.stop() == 0
    made = cli(runtime_dir, "keys", "create", "--name", "solo <b>", "--rpm", "2")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert "shown only once" in made.stderr
    _chat(a, secret)
    _chat(a, secret)
    with pytest.raises(openai.RateLimitError) as limited:
        _chat(a, secret)
    assert _error_body(limited.value)["doc_url"] == a.admin_origin + "/usage"

    listed = cli(runtime_dir, "keys", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout
    (solo,) = [k for k in json.loads(listed.stdout) if k["name"] == "solo <b>"]
    assert solo["rpm"] == 2 and solo["status"] == "active" and solo["roles"] == ["api"]
    table = cli(runtime_dir, "keys", "list")
    assert solo["key_id"] in table.stdout and "KEY ID" in table.stdout

    updated = cli(runtime_dir, "keys", "update", solo["key_id"], "--rpm", "50", "--expires", "30d")
    assert updated.returncode == 0, updated.stderr
    assert "rpm=50" in updated.stdout and "expires=" in updated.stdout
    (after,) = [k for k in _keys(runtime_dir) if k["key_id"] == solo["key_id"]]
    assert after["rpm"] == 50 and after["expires_at"]

    made = cli(runtime_dir, "tenants", "create", "--id", "team-x", "--budget-usd", "1.5")
    assert made.returncode == 0, made.stderr
    tenants = json.loads(cli(runtime_dir, "tenants", "list", "--format", "json").stdout)
    (team,) = [t for t in tenants if t["id"] == "team-x"]
    assert team["budget_usd"] == "1.500000" and team["source"] == "redis"
    assert cli(runtime_dir, "tenants", "update", "team-x", "--rpm", "9").returncode == 0
    tenants = json.loads(cli(runtime_dir, "tenants", "list", "--format", "json").stdout)
    assert [t["rpm"] for t in tenants if t["id"] == "team-x"] == [9]

    rows = _usage_of(runtime_dir, solo["key_id"], requests=2)
    assert sum(r["requests"] for r in rows) == 2
    records = cli(runtime_dir, "usage", "--records", "--key", solo["key_id"], "--format", "json")
    assert len(json.loads(records.stdout)) >= 2

    audit = httpx.get(
        a.admin_origin + "/admin/v1/audit",
        params={"target": solo["key_id"]},
        headers={"Authorization": f"Bearer {a.admin_key}"},
    ).json()["data"]
    actions = [e["action"] for e in audit]
    assert "key.create" in actions and "key.update" in actions
    assert all(secret not in json.dumps(e) for e in audit)

    revoked = cli(runtime_dir, "keys", "revoke", solo["key_id"])
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError) as refused:
        _chat(a, secret)
    assert _error_body(refused.value)["doc_url"] == a.admin_origin + "/keys"


def test_the_runtime_file_goes_with_the_mesh(
    two_meshes: tuple[Path, RunningMesh, RunningMesh],
) -> None:
    runtime_dir, a, _ = two_meshes
    assert a.stop() == 0
    assert not list(runtime_dir.glob("up-*.json"))
    done = cli(runtime_dir, "keys", "list")
    assert done.returncode == 1
    assert "meshgate up" in done.stderr and "REDIS_URL" in done.stderr


def _keys(runtime_dir: Path) -> list[dict[str, Any]]:
    done = cli(runtime_dir, "keys", "list", "--format", "json")
    assert done.returncode == 0, done.stderr
    keys: list[dict[str, Any]] = json.loads(done.stdout)
    return keys


def _usage_of(runtime_dir: Path, key_id: str, requests: int) -> list[dict[str, Any]]:
    """The key's usage rows once the ledger holds `requests` (it writes in batches)."""
    deadline = time.monotonic() + 20
    while True:
        done = cli(runtime_dir, "usage", "--key", key_id, "--format", "json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        if sum(r["requests"] for r in rows) >= requests or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


# ------------------------------------------------------------ pure rules ----


@pytest.fixture
def meshgate_like() -> Iterator[int]:
    """A live process whose command line says meshgate, as a `meshgate up` would."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "meshgate"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _publish(folder: Path, pid: int, **fields: str) -> Path:
    mesh = runtime.LocalMesh(
        pid=pid,
        edge_url="http://127.0.0.1:1",
        admin_url=fields.get("admin_url", "http://127.0.0.1:2"),
        admin_key="sk-mg-admin",
        redis_url=fields.get("redis_url", "redis://127.0.0.1:3/0"),
        config=fields.get("config", str(SAMPLE_CONFIG.resolve())),
    )
    return runtime.write(mesh, {"MESHGATE_RUNTIME_DIR": str(folder)})


def test_stale_runtime_files_are_ignored_and_removed(tmp_path: Path, meshgate_like: int) -> None:
    env = {"MESHGATE_RUNTIME_DIR": str(tmp_path / "rt")}
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = _publish(tmp_path / "rt", dead.pid)
    other = subprocess.Popen(["sleep", "30"])  # alive, but not a meshgate: a recycled pid
    try:
        recycled = _publish(tmp_path / "rt", other.pid)
        live = _publish(tmp_path / "rt", meshgate_like)
        assert [m.pid for m in runtime.running(env)] == [meshgate_like]
        assert not stale.exists() and not recycled.exists() and live.exists()
    finally:
        other.kill()
        other.wait()


def test_a_local_mesh_is_taken_only_where_the_command_points(
    tmp_path: Path, meshgate_like: int
) -> None:
    env = {"MESHGATE_RUNTIME_DIR": str(tmp_path / "rt")}
    _publish(tmp_path / "rt", meshgate_like)
    plain = load_config(None, environ={})

    found = target(plain, url=None, admin_key=None, config_path=None, environ=env)
    assert found == AdminClient("http://127.0.0.1:2", "sk-mg-admin")
    # The same key store: the mesh. Another: the user aims elsewhere (bootstrap, direct).
    same = load_config(None, environ={"REDIS_URL": "redis://127.0.0.1:3/0"})
    assert target(same, url=None, admin_key=None, config_path=None, environ=env) == found
    other = load_config(None, environ={"REDIS_URL": "redis://10.0.0.9:6379/0"})
    assert target(other, url=None, admin_key=None, config_path=None, environ=env) is None
    # Another config file than the mesh's: not that mesh.
    elsewhere = tmp_path / "other.yaml"
    elsewhere.write_text("extends: sample\n")
    assert target(plain, url=None, admin_key=None, config_path=str(elsewhere), environ=env) is None
    assert (
        target(plain, url=None, admin_key=None, config_path=str(SAMPLE_CONFIG), environ=env)
        == found
    )
    # --url wins, and needs an admin key, from the flag or the environment.
    with pytest.raises(AdminError, match="needs an admin key"):
        target(
            plain, url="https://admin.example.com", admin_key=None, config_path=None, environ=env
        )
    keyed = {**env, "MESHGATE_ADMIN_KEY": "sk-mg-remote"}
    assert target(
        plain, url="https://admin.example.com", admin_key=None, config_path=None, environ=keyed
    ) == AdminClient("https://admin.example.com", "sk-mg-remote")


def test_cli_variables_are_not_config_overrides() -> None:
    env = {"MESHGATE_RUNTIME_DIR": "/tmp/x", "MESHGATE_ADMIN_KEY": "sk-mg-x"}
    assert isinstance(load_config(None, environ=env), Config)


def test_doc_url_points_at_the_dashboard_unless_told_otherwise() -> None:
    default = load_config(None, environ={}).doc_pages()
    assert default == DocsConfig(
        keys_url="http://127.0.0.1:8081/keys", usage_url="http://127.0.0.1:8081/usage"
    )
    public = load_config(
        None, environ={"MESHGATE_ADMIN__PUBLIC_URL": "https://admin.example.com/"}
    ).doc_pages()
    assert public.keys_url == "https://admin.example.com/keys"
    assert public.usage_url == "https://admin.example.com/usage"
    mixed = load_config(
        None,
        environ={
            "MESHGATE_ADMIN__PUBLIC_URL": "https://admin.example.com",
            "MESHGATE_EDGE__DOCS__KEYS_URL": "https://console.example.com/api-keys",
        },
    ).doc_pages()
    assert mixed.keys_url == "https://console.example.com/api-keys"
    assert mixed.usage_url == "https://admin.example.com/usage"
    headless = load_config(None, environ={"MESHGATE_ADMIN__PORT": "0"}).doc_pages()
    assert headless == DocsConfig()  # no dashboard: the published docs
    with pytest.raises(ConfigError, match=r"admin\.public_url"):
        load_config(None, environ={"MESHGATE_ADMIN__PUBLIC_URL": "admin.example.com"})


def test_free_local_ports_keep_what_the_config_names() -> None:
    config = load_config(None, environ={"MESHGATE_SERVICES__QUOTA__PORT": "50052"})
    overrides = free_local_ports(config)
    assert "MESHGATE_SERVICES__QUOTA__PORT" not in overrides
    ports = {k: int(v) for k, v in overrides.items() if k.endswith("__PORT")}
    assert set(ports) == {
        f"MESHGATE_SERVICES__{name}__PORT"
        for name in ("AUTH", "VALIDATION", "ROUTER", "ENGINE", "LEDGER")
    }
    assert len(set(ports.values())) == len(ports)
    assert not set(ports.values()) & set(range(50051, 50057))


def test_taken_default_ports_move() -> None:
    """The admin and edge metrics defaults (8081, 9180) move when taken, unless named."""
    import errno
    import socket

    held = []
    for port in (8081, 9180):
        sock = socket.socket()
        # As the launcher's own check binds: a port a closed socket leaves in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            held.append(sock)
        except OSError as exc:  # taken already: just as good
            assert exc.errno == errno.EADDRINUSE
            sock.close()
    try:
        overrides = free_local_ports(load_config(None, environ={}))
        assert int(overrides["MESHGATE_ADMIN__PORT"]) not in (0, 8081)
        assert int(overrides["MESHGATE_EDGE__METRICS_PORT"]) not in (0, 9180)
        named = load_config(
            None, environ={"MESHGATE_ADMIN__PORT": "8081", "MESHGATE_EDGE__METRICS_PORT": "9180"}
        )
        assert not {"MESHGATE_ADMIN__PORT", "MESHGATE_EDGE__METRICS_PORT"} & set(
            free_local_ports(named)
        )
    finally:
        for sock in held:
            sock.close()
    assert os.environ.get("MESHGATE_RUNTIME_DIR")  # tests never share a developer's meshes
