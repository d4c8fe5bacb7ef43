"""A Responses request is billed as the chat request it becomes: the same ledger record
(tokens, cost, reservation), with `endpoint: responses`, whether answered whole, streamed,
streamed and abandoned by the client (which stops the engine), or cut by an engine that
died midway (a `response.failed` event, recorded as failed)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from meshgate.config import SAMPLE_CONFIG
from tests.conftest import RunningMesh, free_ports, write_config
from tests.support import Replica, ledger_records, metric

PRO = "meshgate/reference-pro"
SOLO = "meshgate/solo"  # served by one extra engine replica alone, which a test kills
QUESTION = "Tell me about the lighthouse keeper"
# The fields of a record that billing decides; the rest (ids, times, replica) differ.
BILLED = ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "reserved_tokens")


@dataclass
class Metered:
    mesh: RunningMesh
    engine_metrics: int  # the metrics port of `meshgate up`'s engine
    solo: Replica  # the engine replica that alone serves SOLO


@pytest.fixture(scope="module")
def metered(
    start_mesh: Callable[..., RunningMesh], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Metered]:
    """A mesh whose engines take 5 ms a token and report their counters."""
    engine_metrics, solo_port = free_ports(2)
    models = yaml.safe_load(SAMPLE_CONFIG.read_text())["models"]
    models.append(
        {
            "id": SOLO,
            "category": "text",
            "engines": [{"kind": "grpc", "target": f"127.0.0.1:{solo_port}"}],
        }
    )
    overrides = {
        "models": models,
        "services": {"engine": {"metrics_port": engine_metrics, "token_delay_ms": 5}},
    }
    config_path = write_config(tmp_path_factory.mktemp("solo"), overrides)
    solo = Replica(
        "engine",
        config_path,
        {
            "MESHGATE_SERVICES__ENGINE__PORT": str(solo_port),
            "MESHGATE_SERVICES__ENGINE__METRICS_PORT": "0",
        },
    ).wait_grpc(f"127.0.0.1:{solo_port}")
    try:
        mesh = start_mesh(**overrides)
        yield Metered(mesh, engine_metrics, solo)
        mesh.stop()
    finally:
        solo.stop()


@pytest.fixture
def api(metered: Metered) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {metered.mesh.api_key}"}
    with httpx.Client(base_url=metered.mesh.origin, timeout=60, headers=headers) as session:
        yield session


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": PRO, "messages": [{"role": "user", "content": QUESTION}], **fields}


def _response(**fields: Any) -> dict[str, Any]:
    return {"model": PRO, "input": QUESTION, **fields}


def test_a_response_is_billed_as_the_same_chat_is(api: httpx.Client, metered: Metered) -> None:
    chat = api.post("/v1/chat/completions", json=_chat(max_tokens=200))
    response = api.post("/v1/responses", json=_response(max_output_tokens=200))
    assert chat.status_code == response.status_code == 200
    ids = chat.headers["x-request-id"], response.headers["x-request-id"]
    records = ledger_records(metered.mesh, *ids)
    chat_record, response_record = records[ids[0]], records[ids[1]]
    assert chat_record["endpoint"] == "chat.completions"
    assert response_record["endpoint"] == "responses"
    assert {k: response_record[k] for k in BILLED} == {k: chat_record[k] for k in BILLED}
    assert (response_record["outcome"], response_record["status"]) == ("completed", 200)
    assert response_record["stream"] is False
    usage = response.json()["usage"]
    assert usage["input_tokens"] == response_record["prompt_tokens"]
    assert usage["output_tokens"] == response_record["completion_tokens"]


def test_a_streamed_response_is_billed_as_the_same_chat_stream_is(
    api: httpx.Client, metered: Metered
) -> None:
    chat = api.post("/v1/chat/completions", json=_chat(stream=True))
    response = api.post("/v1/responses", json=_response(stream=True))
    assert chat.status_code == response.status_code == 200
    assert b"event: response.completed\n" in response.content
    ids = chat.headers["x-request-id"], response.headers["x-request-id"]
    records = ledger_records(metered.mesh, *ids)
    chat_record, response_record = records[ids[0]], records[ids[1]]
    assert response_record["endpoint"] == "responses" and response_record["stream"] is True
    assert {k: response_record[k] for k in BILLED} == {k: chat_record[k] for k in BILLED}
    assert response_record["outcome"] == "completed"


def test_a_cancelled_response_stream_stops_the_engine_and_is_billed_for_what_was_sent(
    api: httpx.Client, metered: Metered
) -> None:
    """At 5 ms a token, 2,000 tokens would take 10 s; the client leaves after 5 deltas."""
    mesh, port = metered.mesh, metered.engine_metrics
    whole = api.post("/v1/responses", json=_response(max_output_tokens=16)).json()
    cancelled_before = metric(port, "meshgate_engine_cancelled_streams_total")
    body = _response(stream=True, max_output_tokens=2000, ignore_eos=True)
    with api.stream("POST", "/v1/responses", json=body) as response:
        rid = response.headers["x-request-id"]
        seen = 0
        lines = response.iter_lines()
        for line in lines:
            seen += line == "event: response.output_text.delta"
            if seen == 5:
                break
        lines.close()  # the client hangs up here
        hung_up = time.monotonic()
    while metric(port, "meshgate_engine_active_streams") != 0:
        assert time.monotonic() - hung_up < 5, "the engine kept generating"
        time.sleep(0.01)
    assert metric(port, "meshgate_engine_cancelled_streams_total") == cancelled_before + 1
    record = ledger_records(mesh, rid)[rid]
    assert (record["endpoint"], record["outcome"], record["status"]) == (
        "responses",
        "cancelled",
        499,
    )
    assert record["prompt_tokens"] == whole["usage"]["input_tokens"]
    assert 5 <= record["completion_tokens"] < 2000
    assert record["cost_usd"] > 0


def test_an_engine_dying_midway_is_response_failed_and_recorded_as_failed(
    api: httpx.Client, metered: Metered
) -> None:
    body = {"model": SOLO, "input": QUESTION, "stream": True, "max_output_tokens": 2000}
    with api.stream("POST", "/v1/responses", json=body | {"ignore_eos": True}) as response:
        assert response.status_code == 200
        rid = response.headers["x-request-id"]
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("event: ")).endswith(
            "response.created"
        )
        metered.solo.proc.send_signal(signal.SIGKILL)
        started = time.monotonic()
        rest = list(lines)
        ended_after = time.monotonic() - started
    assert ended_after < 5, "the stream must end promptly, not hang"
    events = [line.removeprefix("event: ") for line in rest if line.startswith("event: ")]
    assert events[-1] == "response.failed"
    assert "response.completed" not in events
    last = json.loads(next(line for line in reversed(rest) if line.startswith("data: "))[6:])
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"]["code"] == "server_error"
    record = ledger_records(metered.mesh, rid)[rid]
    assert (record["endpoint"], record["outcome"], record["status"]) == (
        "responses",
        "failed",
        200,
    )
    assert record["prompt_tokens"] > 0
