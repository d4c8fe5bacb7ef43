"""The admin API (`/admin/v1`) against a real mesh: `meshgate up --replicas auth=2`.

Every operation refuses a missing credential (401) and a plain API key (403);
bad JSON and bad fields are a 400 naming the field; secrets are shown once and
never appear in a listing, the audit log or any process's log; a revoked key is
refused by every auth replica within a second; changes land in the audit log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jsonschema
import openai
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31

from admin import openapi as admin_openapi
from admin.api import OPERATIONS, PREFIX
from bench import procstat
from bench.procstat import descendants
from meshgate.config import load_config
from meshgate.launcher import _banner
from meshgate.v1 import auth_pb2, auth_pb2_grpc
from services.auth.keys import KEY_INDEX, KEY_PREFIX
from tests.conftest import RunningMesh, free_ports, launch_mesh, meshgate_cmd, subprocess_env
from tests.support import RedisServer

PRO = "meshgate/reference-pro"
CHAT = {"model": PRO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = launch_mesh(tmp_path_factory.mktemp("admin"), args=("--replicas", "auth=2"))
    try:
        yield running
    finally:
        assert running.stop() == 0, running.output()


@pytest.fixture(scope="module")
def admin(mesh: RunningMesh) -> Iterator[httpx.Client]:
    assert mesh.admin_origin and mesh.admin_key, mesh.output()
    headers = {"Authorization": f"Bearer {mesh.admin_key}"}
    with httpx.Client(base_url=mesh.admin_origin + PREFIX, headers=headers, timeout=30) as c:
        yield c


# Every secret a test saw: none may appear in a listing, the audit log or a log.
SECRETS: list[str] = []


def create_key(admin: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = admin.post("/keys", json={"name": "test", **fields})
    assert response.status_code == 201, response.text
    key: dict[str, Any] = response.json()
    SECRETS.append(key["secret"])
    return key


def assert_envelope(
    response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def sdk(mesh: RunningMesh, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=mesh.base_url, api_key=secret, max_retries=0)


def _path(path: str) -> str:
    return re.sub(r"{\w+}", "key_0000000000000000", path)


# ------------------------------------------------------------ credentials ----

ALL_OPERATIONS = [
    pytest.param(op.method, op.path, id=f"{op.method} {op.path}") for op in OPERATIONS
]


@pytest.mark.parametrize(("method", "path"), ALL_OPERATIONS)
def test_every_operation_refuses_a_request_without_a_credential(
    mesh: RunningMesh, method: str, path: str
) -> None:
    response = httpx.request(method, mesh.admin_origin + PREFIX + _path(path), json={})
    error = assert_envelope(response, 401, code="missing_api_key")
    assert error["doc_url"] == mesh.admin_origin + "/keys"  # the dashboard's keys page


@pytest.mark.parametrize(("method", "path"), ALL_OPERATIONS)
def test_every_operation_refuses_a_plain_api_key_with_403(
    mesh: RunningMesh, method: str, path: str
) -> None:
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    response = httpx.request(
        method, mesh.admin_origin + PREFIX + _path(path), json={}, headers=headers
    )
    error = assert_envelope(response, 403, code="admin_role_required")
    assert error["type"] == "permission_error"


def test_an_unknown_or_revoked_key_is_401_on_the_admin_api(
    mesh: RunningMesh, admin: httpx.Client
) -> None:
    headers = {"Authorization": "Bearer sk-mg-not-a-key"}
    response = httpx.get(mesh.admin_origin + PREFIX + "/keys", headers=headers)
    assert_envelope(response, 401, code="invalid_api_key")
    other = create_key(admin, name="second admin", roles=["admin"])
    headers = {"Authorization": f"Bearer {other['secret']}"}
    assert httpx.get(mesh.admin_origin + PREFIX + "/keys", headers=headers).status_code == 200
    assert admin.delete(f"/keys/{other['id']}").status_code == 200
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        response = httpx.get(mesh.admin_origin + PREFIX + "/keys", headers=headers)
        if response.status_code == 401:
            break
        time.sleep(0.05)
    assert_envelope(response, 401, code="revoked_api_key")


def test_an_admin_key_cannot_call_the_inference_api_unless_it_also_has_the_api_role(
    mesh: RunningMesh, admin: httpx.Client
) -> None:
    with sdk(mesh, mesh.admin_key) as client, pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(**CHAT)
    assert caught.value.status_code == 403
    assert caught.value.code == "api_role_required"

    both = create_key(admin, name="both roles", roles=["api", "admin"])
    assert both["roles"] == ["api", "admin"]
    with sdk(mesh, both["secret"]) as client:
        assert client.chat.completions.create(**CHAT).choices
    headers = {"Authorization": f"Bearer {both['secret']}"}
    assert httpx.get(mesh.admin_origin + PREFIX + "/keys", headers=headers).status_code == 200


# ------------------------------------------------------------------- keys ----


def test_a_created_key_has_an_id_and_a_secret_that_works_once_shown(
    mesh: RunningMesh, admin: httpx.Client
) -> None:
    key = create_key(admin, name="team-a", rpm=60)
    assert key["id"].startswith("key_") and key["secret"].startswith("sk-mg-")
    assert key["rpm"] == 60 and key["status"] == "active" and key["roles"] == ["api"]
    with sdk(mesh, key["secret"]) as client:
        assert client.chat.completions.create(**CHAT).choices

    got = admin.get(f"/keys/{key['id']}")
    assert got.status_code == 200 and got.json()["id"] == key["id"]
    assert "secret" not in got.json()

    listing = admin.get("/keys")
    assert listing.status_code == 200
    data = listing.json()["data"]
    assert key["id"] in [k["id"] for k in data]
    assert all("secret" not in k for k in data)
    for secret in SECRETS:
        assert secret not in listing.text


def test_a_key_can_be_created_with_every_field(admin: httpx.Client) -> None:
    key = create_key(
        admin,
        name="full",
        rpm=10,
        tpm=1000,
        max_concurrency=2,
        budget_tokens=5000,
        budget_usd="12.5",
        budget_period="month",
        models=[PRO],
        expires_at="2999-01-01T00:00:00Z",
        redis_failure_policy="fail_open",
    )
    assert key["budget_usd"] == "12.50" and key["remaining_usd"] == "12.50"
    assert key["budget_period"] == "month" and key["models"] == [PRO]
    assert key["expires_at"].startswith("2999-01-01") and key["redis_failure_policy"] == "fail_open"


def test_updating_a_key_changes_its_limits_in_place(mesh: RunningMesh, admin: httpx.Client) -> None:
    key = create_key(admin, name="to update", rpm=1)
    response = admin.patch(
        f"/keys/{key['id']}", json={"rpm": 500, "models": [PRO], "budget_usd": 3}
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["rpm"] == 500 and changed["models"] == [PRO]
    assert changed["budget_usd"] == "3.00" and changed["id"] == key["id"]
    with sdk(mesh, key["secret"]) as client:  # same secret, new limits: rpm 1 would refuse one
        for _ in range(3):
            client.chat.completions.create(**CHAT)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/keys/key_0000000000000000", None),
        ("PATCH", "/keys/key_0000000000000000", {"rpm": 1}),
        ("DELETE", "/keys/key_0000000000000000", None),
        ("POST", "/keys/key_0000000000000000/rotate", None),
        ("PATCH", "/tenants/no-such-tenant", {"rpm": 1}),
    ],
)
def test_an_unknown_key_or_tenant_is_404(
    admin: httpx.Client, method: str, path: str, body: Any
) -> None:
    response = admin.request(method, path, json=body)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def _replica_ports(mesh: RunningMesh, service: str) -> list[int]:
    """The gRPC port each replica of `service` listens on."""
    ports = []
    for pid in descendants(mesh.proc.pid):
        try:
            process = psutil.Process(pid)
            argv = procstat.argv(pid)
            if "serve" not in argv or service not in argv:
                continue
            listening = [
                c.laddr.port for c in process.net_connections("tcp") if c.status == "LISTEN"
            ]
        except psutil.Error:
            continue
        ports += listening
    return sorted(set(ports))


def _authenticate(port: int, secret: str) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            auth_pb2_grpc.AuthServiceStub(channel).Authenticate(
                auth_pb2.AuthenticateRequest(authorization=f"Bearer {secret}"), timeout=2
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_a_revoked_key_is_refused_by_every_auth_replica_within_a_second(
    mesh: RunningMesh, admin: httpx.Client
) -> None:
    ports = _replica_ports(mesh, "auth")
    assert len(ports) == 2, ports
    key = create_key(admin, name="to revoke")
    with sdk(mesh, key["secret"]) as client:
        for _ in range(4):  # both replicas (round robin) and the edge cache the principal
            client.chat.completions.create(**CHAT)
    assert [_authenticate(p, key["secret"]) for p in ports] == [grpc.StatusCode.OK] * 2

    revoked = admin.delete(f"/keys/{key['id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    started = time.monotonic()
    pending = set(ports)
    while pending and time.monotonic() - started < 1.0:
        pending = {p for p in pending if _authenticate(p, key["secret"]) == grpc.StatusCode.OK}
    assert not pending, f"auth replicas on {pending} still accept the key after 1 s"
    again = admin.delete(f"/keys/{key['id']}")  # idempotent: the first revocation's time stays
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
    with sdk(mesh, key["secret"]) as client:
        for _ in range(4):
            with pytest.raises(openai.AuthenticationError) as caught:
                client.chat.completions.create(**CHAT)
            assert caught.value.code == "revoked_api_key"


def test_rotating_a_key_gives_a_new_secret_and_revokes_the_old_one(
    mesh: RunningMesh, admin: httpx.Client
) -> None:
    old = create_key(admin, name="to rotate", rpm=77)
    response = admin.post(f"/keys/{old['id']}/rotate")
    assert response.status_code == 201, response.text
    new = response.json()
    SECRETS.append(new["secret"])
    assert new["revoked_key_id"] == old["id"] and new["id"] != old["id"]
    assert new["rpm"] == 77 and new["name"] == "to rotate"
    with sdk(mesh, new["secret"]) as client:
        assert client.chat.completions.create(**CHAT).choices
    assert admin.get(f"/keys/{old['id']}").json()["status"] == "revoked"
    again = admin.post(f"/keys/{old['id']}/rotate")
    assert_envelope(again, 400, param="key_id")


# ---------------------------------------------------------------- tenants ----


def test_tenants_are_created_listed_and_updated(mesh: RunningMesh, admin: httpx.Client) -> None:
    response = admin.post("/tenants", json={"id": "team-x", "rpm": 100, "budget_usd": "50"})
    assert response.status_code == 201, response.text
    tenant = response.json()
    assert tenant["id"] == "team-x" and tenant["source"] == "redis"
    assert tenant["budget_usd"] == "50.00" and tenant["remaining_usd"] == "50.00"

    assert_envelope(admin.post("/tenants", json={"id": "team-x"}), 409, param="id")
    assert "team-x" in [t["id"] for t in admin.get("/tenants").json()["data"]]

    updated = admin.patch("/tenants/team-x", json={"budget_usd": "75.25", "budget_period": "day"})
    assert updated.status_code == 200, updated.text
    assert updated.json()["budget_usd"] == "75.25" and updated.json()["budget_period"] == "day"

    key = create_key(admin, name="in team-x", tenant="team-x")
    assert key["tenant"] == "team-x"
    with sdk(mesh, key["secret"]) as client:
        assert client.chat.completions.create(**CHAT).choices
    assert_envelope(
        admin.post("/keys", json={"name": "x", "tenant": "nobody"}), 404, param="tenant"
    )


# -------------------------------------------------------------- bad input ----


@pytest.mark.parametrize(
    ("method", "path", "content", "param"),
    [
        ("POST", "/keys", b'{"name": ', None),
        ("POST", "/keys", b"[1, 2]", None),
        ("POST", "/keys", b'"text"', None),
        ("POST", "/keys", b"{}", "name"),
        ("POST", "/keys", b'{"name": ""}', "name"),
        ("POST", "/keys", b'{"name": "a", "rpm": "10"}', "rpm"),
        ("POST", "/keys", b'{"name": "a", "rpm": -1}', "rpm"),
        ("POST", "/keys", b'{"name": "a", "rpm": true}', "rpm"),
        ("POST", "/keys", b'{"name": "a", "rmp": 10}', "rmp"),
        ("POST", "/keys", b'{"name": "a", "budget_usd": "0.0000001"}', "budget_usd"),
        ("POST", "/keys", b'{"name": "a", "budget_usd": "lots"}', "budget_usd"),
        ("POST", "/keys", b'{"name": "a", "budget_period": "week"}', "budget_period"),
        ("POST", "/keys", b'{"name": "a", "roles": ["root"]}', "roles[0]"),
        ("POST", "/keys", b'{"name": "a", "roles": []}', "roles"),
        ("POST", "/keys", b'{"name": "a", "models": "all"}', "models"),
        (
            "POST",
            "/keys",
            b'{"name": "a", "models": ["meshgate/reference-pro", "gpt-9"]}',
            "models[1]",
        ),
        ("PATCH", "/keys/key_0000000000000000", b'{"models": ["gpt-9"]}', "models[0]"),
        ("POST", "/keys", b'{"name": "a", "expires_at": "soon"}', "expires_at"),
        ("POST", "/keys", b'{"name": "a", "expires_at": "2001-01-01T00:00:00Z"}', "expires_at"),
        ("PATCH", "/keys/key_0000000000000000", b"{}", None),
        ("PATCH", "/keys/key_0000000000000000", b'{"tpm": -5}', "tpm"),
        ("POST", "/tenants", b'{"id": "bad id!"}', "id"),
        ("POST", "/tenants", b'{"id": "t", "max_concurrency": 1.5}', "max_concurrency"),
        ("PATCH", "/tenants/team-x", b'{"budget_usd": -1}', "budget_usd"),
        ("GET", "/usage?group_by=week", b"", "group_by"),
        ("GET", "/usage?group_by=hour,day", b"", "group_by"),
        ("GET", "/usage?since=yesterday", b"", "since"),
        ("GET", "/usage?since=2h&until=3h", b"", "until"),
        ("GET", "/usage?format=xml", b"", "format"),
        ("GET", "/usage?key=abc", b"", "key"),
        ("GET", "/usage/records?limit=0", b"", "limit"),
        ("GET", "/usage/records?limit=many", b"", "limit"),
        ("GET", "/usage/records?page_token=%21%21", b"", None),
        ("GET", "/audit?limit=5000", b"", "limit"),
        ("GET", "/keys?verbose=1", b"", "verbose"),
    ],
)
def test_bad_json_and_bad_fields_are_a_400_naming_the_field(
    admin: httpx.Client, method: str, path: str, content: bytes, param: str | None
) -> None:
    response = admin.request(
        method, path, content=content or None, headers={"content-type": "application/json"}
    )
    error = assert_envelope(response, 400, param=param)
    assert error["type"] == "invalid_request_error" and error["code"] is None


def test_unknown_urls_and_methods_are_envelopes_too(mesh: RunningMesh, admin: httpx.Client) -> None:
    assert_envelope(admin.get("/nothing-here"), 404)
    assert_envelope(admin.put("/keys"), 405)


# ------------------------------------------------------------------ usage ----


def _poll(admin: httpx.Client, path: str, params: dict[str, str], *, rows: int) -> Any:
    deadline = time.monotonic() + 20
    while True:
        response = admin.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        if len(body["data"]) >= rows and all(r.get("requests", 1) for r in body["data"]):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.3)


def test_usage_shows_a_keys_requests_and_spend_by_key_tenant_model_and_day(
    mesh: RunningMesh, admin: httpx.Client
) -> None:
    key = create_key(admin, name="metered")
    with sdk(mesh, key["secret"]) as client:
        for _ in range(2):
            client.chat.completions.create(**CHAT)
    body = _poll(admin, "/usage", {"key_id": key["id"]}, rows=1)
    (row,) = body["data"]
    assert row["key_id"] == key["id"] and row["model"] == PRO
    deadline = time.monotonic() + 20
    while row["requests"] < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
        (row,) = admin.get("/usage", params={"key_id": key["id"]}).json()["data"]
    assert row["requests"] == 2 and row["prompt_tokens"] > 0
    assert float(row["cost_usd"]) > 0

    grouped = admin.get(
        "/usage", params={"key_id": key["id"], "group_by": "key,tenant,model,day"}
    ).json()["data"]
    assert len(grouped) == 1 and grouped[0]["day"].endswith("T00:00:00Z")
    assert grouped[0]["tenant"] == "" and grouped[0]["requests"] == 2

    records = admin.get("/usage/records", params={"key_id": key["id"], "limit": "1"})
    page = records.json()
    assert len(page["data"]) == 1 and page["next_page_token"]
    assert page["data"][0]["key_id"] == key["id"] and page["data"][0]["status"] == 200
    following = admin.get(
        "/usage/records", params={"key_id": key["id"], "page_token": page["next_page_token"]}
    ).json()
    assert len(following["data"]) == 1 and following["data"][0]["id"] != page["data"][0]["id"]

    csv = admin.get("/usage", params={"key_id": key["id"], "format": "csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    header, line = csv.text.strip().splitlines()
    assert header.split(",")[:3] == ["key_id", "model", "requests"]
    assert line.startswith(f"{key['id']},{PRO},2,")
    records_csv = admin.get("/usage/records", params={"key_id": key["id"], "format": "csv"})
    assert records_csv.headers["content-type"].startswith("text/csv")
    assert len(records_csv.text.strip().splitlines()) == 3


# ---------------------------------------------------------- models, audit ----


def test_models_show_live_replica_health(admin: httpx.Client) -> None:
    response = admin.get("/models")
    assert response.status_code == 200
    models = {m["id"]: m for m in response.json()["data"]}
    assert {PRO, "meshgate/reference-mini", "bge-m3"} <= set(models)
    pro = models[PRO]
    assert pro["serving"] and pro["replicas"] and all(r["healthy"] for r in pro["replicas"])
    assert "tool_use" in pro["capabilities"] and pro["context_length"] > 0


def test_an_admin_action_appears_in_the_audit_log_without_its_secret(
    mesh: RunningMesh, admin: httpx.Client
) -> None:
    key = create_key(admin, name="audited", rpm=5)
    admin.patch(f"/keys/{key['id']}", json={"rpm": 6})
    admin.delete(f"/keys/{key['id']}")
    response = admin.get("/audit", params={"target": key["id"]})
    assert response.status_code == 200
    events = response.json()["data"]
    assert [e["action"] for e in events] == ["key.revoke", "key.update", "key.create"]
    created = events[-1]
    assert created["details"] == {"name": "audited", "rpm": 5}
    assert events[1]["details"] == {"rpm": 6}
    me = next(k for k in admin.get("/keys").json()["data"] if k["roles"] == ["admin"])
    assert created["actor_name"] == me["name"] and created["actor_key_id"] == me["id"]
    assert created["source"].startswith("127.0.0.1:") and created["request_id"].startswith("req_")
    assert created["time"]
    everything = admin.get("/audit", params={"limit": "1000"}).text
    for secret in [*SECRETS, mesh.admin_key]:
        assert secret not in everything


def test_no_secret_appears_in_any_log(mesh: RunningMesh) -> None:
    assert SECRETS, "the tests above created keys"
    logs = mesh.stderr()
    for secret in [*SECRETS, mesh.admin_key]:
        assert secret not in logs


# -------------------------------------------------------------- the rest ----


def test_the_openapi_document_describes_every_operation(mesh: RunningMesh) -> None:
    response = httpx.get(mesh.admin_origin + PREFIX + "/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    for op in OPERATIONS:
        described = document["paths"][PREFIX + op.path][op.method.lower()]
        assert str(op.status) in described["responses"]
        assert {"400", "401", "403"} <= set(described["responses"])
    schemas = document["components"]["schemas"]
    for ref in re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', response.text):
        assert ref in schemas, ref
    create = document["paths"][PREFIX + "/keys"]["post"]["requestBody"]["content"]
    body = schemas[create["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"name", "rpm", "roles"} <= set(body["properties"])
    assert "secret" in schemas["CreatedKey"]["properties"]
    assert "secret" not in schemas["Key"]["properties"]


def test_keys_create_admin_makes_an_admin_key_in_the_key_store(
    mesh: RunningMesh, admin: httpx.Client
) -> None:
    match = re.search(r"embedded redis at (\S+)", mesh.stderr())
    assert match, mesh.output()
    created = subprocess.run(
        meshgate_cmd("keys", "create", "--name", "ops", "--admin"),
        env=subprocess_env({"REDIS_URL": match.group(1)}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    SECRETS.append(secret)
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(mesh.admin_origin + PREFIX + "/keys", headers=headers).status_code == 200
    with sdk(mesh, secret) as client, pytest.raises(openai.PermissionDeniedError):
        client.models.list()


def test_the_admin_listener_is_not_the_public_port(mesh: RunningMesh) -> None:
    assert mesh.admin_origin != mesh.origin
    assert httpx.get(mesh.origin + PREFIX + "/keys").status_code == 404
    assert Path(mesh.config_path).exists()


def test_meshgate_serve_admin_runs_the_admin_api_as_its_own_process(
    mesh: RunningMesh, tmp_path: Path
) -> None:
    """As compose and Kubernetes run it: one process, dialing the mesh's services."""
    (port,) = free_ports(1)
    env = subprocess_env({"MESHGATE_ADMIN__PORT": str(port)})
    config = str(mesh.config_path)
    with (tmp_path / "admin.stderr").open("wb") as stderr:
        proc = subprocess.Popen(
            meshgate_cmd("serve", "admin", "--config", config), env=env, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(
            meshgate_cmd("health", "admin", "--config", config), env=env
        ).returncode:
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "admin.stderr"
            ).read_text()
            time.sleep(0.3)
        headers = {"Authorization": f"Bearer {mesh.admin_key}"}
        response = httpx.get(f"http://127.0.0.1:{port}{PREFIX}/keys", headers=headers)
        assert response.status_code == 200 and response.json()["data"]
    finally:
        proc.terminate()
        # uvicorn drains, then re-raises the SIGTERM it caught (as the edge does).
        assert proc.wait(15) in (0, -signal.SIGTERM)


def test_the_openapi_document_is_valid_openapi_31() -> None:
    document = admin_openapi.document()
    problems = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft202012Validator(OPENAPI_31).iter_errors(document)
    ]
    assert not problems, problems


SCHEMATHESIS_CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)


@pytest.mark.parametrize(("method", "path"), ALL_OPERATIONS)
def test_generated_requests_get_documented_answers(
    mesh: RunningMesh, method: str, path: str
) -> None:
    """schemathesis, from the served document: valid requests get their documented answer,
    invalid ones a documented 4xx, and nothing is ever a 500."""
    api = schemathesis.openapi.from_url(mesh.admin_origin + PREFIX + "/openapi.json", timeout=10)
    operation = api[PREFIX + path][method]
    headers = {"Authorization": f"Bearer {mesh.admin_key}"}
    has_body = next(op for op in OPERATIONS if (op.method, op.path) == (method, path)).body
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=strategy)
    @settings(
        max_examples=int(os.environ.get("ADMIN_EXAMPLES", "15")),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        # A negative case may have broken the credential itself: then it is sent as broken.
        own = "Authorization" in (case.headers or {})
        response = case.call(headers={} if own else headers, timeout=30)
        case.validate_response(response, checks=SCHEMATHESIS_CHECKS)
        # A query parameter's type mutation is still a valid string on the URL ("5"), so
        # only a negative body (JSON keeps its types) must be refused.
        if case.meta.generation.mode.is_negative and has_body:
            assert 400 <= response.status_code < 500, (case.body, response.text)

    run()


def test_the_banner_puts_the_admin_lines_next_to_the_api_key() -> None:
    config = load_config(environ={})
    lines = _banner(config, "http://127.0.0.1:8080", (), ("http://127.0.0.1:8081", "sk-mg-x"))
    assert lines[:4] == [
        "meshgate is up: http://127.0.0.1:8080/v1",
        "api key: sk-meshgate-dev-local-only",
        "dashboard: http://127.0.0.1:8081/",
        "admin key: sk-mg-x",
    ]
    assert not [line for line in _banner(config, "http://h") if line.startswith("admin key")]


def test_with_an_external_redis_the_development_admin_key_is_revoked_at_exit(
    tmp_path: Path,
) -> None:
    """It would outlive the mesh in a Redis that outlives it."""
    redis = RedisServer().start()
    try:
        other = launch_mesh(tmp_path, {"redis": {"url": redis.url}})
        headers = {"Authorization": f"Bearer {other.admin_key}"}
        keys = httpx.get(other.admin_origin + PREFIX + "/keys", headers=headers).json()["data"]
        (mine,) = [k for k in keys if k["roles"] == ["admin"]]
        assert other.stop() == 0, other.output()
        client = Redis.from_url(redis.url)
        try:
            stored = client.hget(
                KEY_PREFIX + client.hget(KEY_INDEX, mine["id"]).decode(), "revoked_at"
            )
        finally:
            client.close()
        assert stored is not None and float(stored) > 0
    finally:
        redis.kill()
