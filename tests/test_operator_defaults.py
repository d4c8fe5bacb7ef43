"""An operator's defaults: metrics on by default and listed in the banner (each replica on
its own port), CORS that lets a browser read the retry headers, and the operator's own
doc_url pages and unsupported-endpoint messages, with neutral defaults."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from edge.errors import UNSUPPORTED, unsupported_or_unknown
from meshgate import errors
from meshgate.config import (
    SAMPLE_CONFIG,
    SERVICE_NAMES,
    ConfigError,
    DocsConfig,
    UnsupportedConfig,
    load_config,
)
from meshgate.launcher import METRICS_HEADING, _banner
from tests.conftest import RunningMesh, free_ports, launch_mesh

PRO = "meshgate/reference-pro"
ORIGIN = "https://app.example"
KEYS_PAGE = "https://console.example.com/keys"
USAGE_PAGE = "https://console.example.com/usage"
FINE_TUNING = "Fine-tuning is not available on this API. Use https://tune.example.com instead."
ONE_RPM = "sk-operator-one-request-per-minute"
TINY_TPM = "sk-operator-ten-tokens-per-minute"
# Other vendors' products and hosts, which no default may name.
VENDORS = ("flexai", "flex.ai", "openai.com", "platform.openai", "anthropic", "azure")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meshgate.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------- the config ----


def test_every_process_has_its_own_default_metrics_port(tmp_path: Path) -> None:
    config = load_config(SAMPLE_CONFIG, environ={})
    defaults = load_config(_write(tmp_path, "{}\n"), environ={})
    for loaded in (config, defaults):
        metrics = [loaded.edge.metrics_port] + [
            loaded.services.get(name).metrics_port for name in SERVICE_NAMES
        ]
        assert metrics == [9180, 9181, 9182, 9183, 9184, 9185, 9186]
        listeners = {loaded.edge.port} | {loaded.services.get(n).port for n in SERVICE_NAMES}
        assert not listeners & set(metrics)


def test_a_service_given_without_metrics_port_keeps_its_default(tmp_path: Path) -> None:
    path = _write(tmp_path, "services:\n  quota: {host: 0.0.0.0, port: 6000}\n")
    config = load_config(path, environ={})
    assert config.services.quota.metrics_port == 9182
    off = load_config(path, environ={"MESHGATE_SERVICES__QUOTA__METRICS_PORT": "0"})
    assert off.services.quota.metrics_port == 0


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("edge: {docs: {keys_url: 'console/keys'}}\n", "edge.docs.keys_url"),
        ("edge: {docs: {usage_url: ''}}\n", "edge.docs.usage_url"),
        ("edge: {docs: {keys: 'https://x'}}\n", "edge.docs.keys"),
        ("edge: {unsupported: {fine_tuning: ''}}\n", "edge.unsupported.fine_tuning"),
        ("edge: {unsupported: {embeddings: 'no'}}\n", "edge.unsupported.embeddings"),
    ],
)
def test_bad_docs_or_messages_name_the_key_path(tmp_path: Path, text: str, path: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{path}: ")):
        load_config(_write(tmp_path, text), environ={})


def test_defaults_name_no_other_vendor() -> None:
    texts = [*UnsupportedConfig().model_dump().values(), *DocsConfig().model_dump().values()]
    texts += [SAMPLE_CONFIG.read_text()]
    for text in texts:
        assert not [v for v in VENDORS if v in text.lower()], text


def test_every_unsupported_endpoint_has_a_message_in_config() -> None:
    fields = set(UnsupportedConfig.model_fields)
    assert {field for _, field in UNSUPPORTED} == fields
    for prefix, field in UNSUPPORTED:
        error = unsupported_or_unknown("POST", prefix + "/x")
        assert error.status == 404 and error.message == getattr(UnsupportedConfig(), field)
    assert (
        unsupported_or_unknown("GET", "/v1/filesystem").message
        == "Invalid URL (GET /v1/filesystem)"
    )


def test_doc_pages_map_the_defaults_to_the_operators_pages() -> None:
    error = errors.ApiError(401, "authentication_error", "x", doc_url=errors.DOC_URL_KEYS)
    other = errors.ApiError(429, "tokens", "y", doc_url="https://elsewhere.example/")
    try:
        errors.use_doc_pages(DocsConfig(keys_url=KEYS_PAGE, usage_url=USAGE_PAGE))
        assert error.body()["doc_url"] == KEYS_PAGE
        assert error.to_proto().doc_url == KEYS_PAGE
        assert other.body()["doc_url"] == "https://elsewhere.example/"
    finally:
        errors.use_doc_pages(DocsConfig())
    assert error.body()["doc_url"] == errors.DOC_URL_KEYS


def test_the_banner_lists_scrape_targets_or_says_metrics_are_off() -> None:
    config = load_config(SAMPLE_CONFIG, environ={})
    origin = "http://127.0.0.1:8080"
    scrape = [("edge", "http://127.0.0.1:9180/metrics"), ("quota#2", "http://127.0.0.1:9/metrics")]
    lines = _banner(config, origin, scrape)
    assert lines[0] == f"meshgate is up: {origin}/v1" and lines[1].startswith("api key: ")
    start = lines.index(METRICS_HEADING)
    assert [line.split() for line in lines[start + 1 :]] == [list(pair) for pair in scrape]
    assert _banner(config, origin)[-1] == "metrics: off (every metrics_port is 0)"


# --------------------------------------------------------------- the mesh ----


@pytest.fixture(scope="module")
def operated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """A mesh with metrics on every process, two quota replicas, CORS for one origin,
    the operator's doc pages and fine-tuning message, and two tightly limited keys."""
    edge_metrics, *service_metrics = free_ports(1 + len(SERVICE_NAMES))
    sample_keys = yaml.safe_load(SAMPLE_CONFIG.read_text())["keys"]
    overrides: dict[str, Any] = {
        "edge": {
            "metrics_port": edge_metrics,
            "cors_allow_origins": [ORIGIN],
            "docs": {"keys_url": KEYS_PAGE, "usage_url": USAGE_PAGE},
            "unsupported": {"fine_tuning": FINE_TUNING},
        },
        "services": {
            name: {"metrics_port": port}
            for name, port in zip(SERVICE_NAMES, service_metrics, strict=True)
        },
        "ledger": {"enabled": False},
        "keys": [
            *sample_keys,
            {"name": "one-rpm", "secret": ONE_RPM, "rpm": 1},
            {"name": "tiny-tpm", "secret": TINY_TPM, "tpm": 10},
        ],
    }
    mesh = launch_mesh(
        tmp_path_factory.mktemp("operated"), overrides, args=("--replicas", "quota=2")
    )
    yield mesh
    assert mesh.stop() == 0, mesh.output()


def _scrape_lines(mesh: RunningMesh) -> dict[str, str]:
    deadline = time.monotonic() + 10
    while True:
        lines = list(mesh.stdout_lines)
        if METRICS_HEADING in lines:
            listed = lines[lines.index(METRICS_HEADING) + 1 :]
            found = dict(line.split() for line in listed if line.startswith("  "))
            # The banner may still be arriving: engine's line is the last one.
            if "quota#2" in found and "engine" in found and len(found) == len(listed):
                return found
        assert time.monotonic() < deadline, mesh.output()
        time.sleep(0.05)


def test_the_banner_lists_every_scrape_target_each_replica_on_its_own_port(
    operated: RunningMesh,
) -> None:
    listed = _scrape_lines(operated)
    config = operated.config
    expected = {"edge": config.edge.metrics_port} | {
        name: config.services.get(name).metrics_port for name in SERVICE_NAMES if name != "ledger"
    }
    for name, port in expected.items():
        assert listed[name] == f"http://127.0.0.1:{port}/metrics", listed
    assert set(listed) == {*expected, "quota#2"}
    ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in listed.values()]
    assert len(set(ports)) == len(ports)
    for name, url in listed.items():
        text = httpx.get(url, timeout=10).text
        assert "process_cpu_seconds_total" in text, name
        if name.startswith("quota"):
            assert "meshgate_quota_decisions_total" in text, name


def _raw(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 exchange over a plain socket: status, headers (lower-cased), body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, rest


def _chat(max_tokens: int) -> bytes:
    return orjson.dumps(
        {"model": PRO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    )


def _exposed(headers: dict[str, str]) -> set[str]:
    return {h.strip() for h in headers["access-control-expose-headers"].split(",")}


def test_cors_lets_a_browser_read_the_retry_headers(operated: RunningMesh) -> None:
    port = operated.config.edge.port
    auth = {"Origin": ORIGIN, "Authorization": f"Bearer {ONE_RPM}"}
    status, first, _ = _raw(port, "POST", "/v1/chat/completions", auth, _chat(2))
    assert status == 200
    assert first["access-control-allow-origin"] == ORIGIN
    assert {"retry-after", "retry-after-ms", "x-should-retry"} <= _exposed(first)

    status, limited, body = _raw(port, "POST", "/v1/chat/completions", auth, _chat(2))
    assert status == 429, body
    assert int(limited["retry-after-ms"]) > 0
    assert {"retry-after-ms", "retry-after"} <= _exposed(limited)
    assert orjson.loads(body)["error"]["doc_url"] == USAGE_PAGE

    tiny = {"Origin": ORIGIN, "Authorization": f"Bearer {TINY_TPM}"}
    status, never, body = _raw(port, "POST", "/v1/chat/completions", tiny, _chat(1000))
    assert status == 429, body
    assert never["x-should-retry"] == "false"
    assert "x-should-retry" in _exposed(never)
    assert never["access-control-allow-origin"] == ORIGIN


def test_other_origins_still_get_no_cors_headers(operated: RunningMesh) -> None:
    headers = {"Origin": "https://evil.example", "Authorization": f"Bearer {ONE_RPM}"}
    _, reply, _ = _raw(operated.config.edge.port, "GET", "/v1/models", headers)
    assert "access-control-allow-origin" not in reply
    assert "access-control-expose-headers" not in reply


def test_auth_errors_point_at_the_operators_keys_page(operated: RunningMesh) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-not-a-key-at-all-000000"}):
        reply = httpx.get(f"{operated.origin}/v1/models", headers=headers, timeout=30)
        assert reply.status_code == 401
        error = reply.json()["error"]
        assert error["doc_url"] == KEYS_PAGE
        assert {"message", "type", "param", "code"} <= set(error)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/fine-tuning/jobs", FINE_TUNING),
        ("/v1/fine_tuning/jobs", FINE_TUNING),
        ("/v1/batches", UnsupportedConfig().batches),
        ("/v1/files/file-1", UnsupportedConfig().files),
    ],
)
def test_unsupported_endpoints_answer_the_operators_message(
    operated: RunningMesh, path: str, message: str
) -> None:
    reply = httpx.post(
        f"{operated.origin}{path}",
        json={},
        headers={"Authorization": f"Bearer {operated.api_key}"},
        timeout=30,
    )
    assert reply.status_code == 404
    assert reply.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }
