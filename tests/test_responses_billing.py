"""A Responses request is billed as the chat request it becomes: the same ledger record
(tokens, cost, reservation), with `endpoint: responses`, whether answered whole, streamed,
or streamed and abandoned by the client (which stops the engine)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningMesh, free_ports, meshgate_cmd, subprocess_env
from tests.support import metric

PRO = "meshgate/reference-pro"
QUESTION = "Tell me about the lighthouse keeper"
# The fields of a record that billing decides; the rest (ids, times, replica) differ.
BILLED = ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "reserved_tokens")


@pytest.fixture(scope="module")
def metered(start_mesh: Callable[..., RunningMesh]) -> Iterator[tuple[RunningMesh, int]]:
    """A mesh whose engine takes 5 ms a token and reports its counters."""
    (engine_metrics,) = free_ports(1)
    mesh = start_mesh(services={"engine": {"metrics_port": engine_metrics, "token_delay_ms": 5}})
    yield mesh, engine_metrics
    mesh.stop()


@pytest.fixture
def api(metered: tuple[RunningMesh, int]) -> Iterator[httpx.Client]:
    mesh, _ = metered
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.origin, timeout=60, headers=headers) as session:
        yield session


def _records(mesh: RunningMesh, *request_ids: str) -> dict[str, dict[str, Any]]:
    """The ledger's records of these requests, as `meshgate usage` prints them, once all are in."""
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            meshgate_cmd(
                "usage", "--config", str(mesh.config_path), "--records", "--format", "json",
                "--limit", "1000",
            ),
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        found = {
            r["request_id"]: r for r in json.loads(out.stdout) if r["request_id"] in request_ids
        }
        if len(found) == len(request_ids):
            return found
        assert time.monotonic() < deadline, f"records of {request_ids} not in the ledger"
        time.sleep(0.3)


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": PRO, "messages": [{"role": "user", "content": QUESTION}], **fields}


def _response(**fields: Any) -> dict[str, Any]:
    return {"model": PRO, "input": QUESTION, **fields}


def test_a_response_is_billed_as_the_same_chat_is(
    api: httpx.Client, metered: tuple[RunningMesh, int]
) -> None:
    chat = api.post("/v1/chat/completions", json=_chat(max_tokens=200))
    response = api.post("/v1/responses", json=_response(max_output_tokens=200))
    assert chat.status_code == response.status_code == 200
    ids = chat.headers["x-request-id"], response.headers["x-request-id"]
    records = _records(metered[0], *ids)
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
    api: httpx.Client, metered: tuple[RunningMesh, int]
) -> None:
    chat = api.post("/v1/chat/completions", json=_chat(stream=True))
    response = api.post("/v1/responses", json=_response(stream=True))
    assert chat.status_code == response.status_code == 200
    assert b"event: response.completed\n" in response.content
    ids = chat.headers["x-request-id"], response.headers["x-request-id"]
    records = _records(metered[0], *ids)
    chat_record, response_record = records[ids[0]], records[ids[1]]
    assert response_record["endpoint"] == "responses" and response_record["stream"] is True
    assert {k: response_record[k] for k in BILLED} == {k: chat_record[k] for k in BILLED}
    assert response_record["outcome"] == "completed"


def test_a_cancelled_response_stream_stops_the_engine_and_is_billed_for_what_was_sent(
    api: httpx.Client, metered: tuple[RunningMesh, int]
) -> None:
    """At 5 ms a token, 2,000 tokens would take 10 s; the client leaves after 5 deltas."""
    mesh, port = metered
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
    record = _records(mesh, rid)[rid]
    assert (record["endpoint"], record["outcome"], record["status"]) == (
        "responses",
        "cancelled",
        499,
    )
    assert record["prompt_tokens"] == whole["usage"]["input_tokens"]
    assert 5 <= record["completion_tokens"] < 2000
    assert record["cost_usd"] > 0
