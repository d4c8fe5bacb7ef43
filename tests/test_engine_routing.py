"""Routing on the engines' own load, through a real mesh and the openai SDK.

The engines are bench/paced_engine.py processes: paced OpenAI-compatible
servers whose /metrics carry their real queue under vLLM's and SGLang's names
(checked against pages written from those engines' sources in
tests/test_engine_signals.py). A control endpoint makes one report a deep queue,
or makes its /metrics hang.

- a replica that reports a deep queue or a full KV cache gets no new requests;
- one whose /metrics stops answering counts as saturated, never idle;
- past `max_concurrency` requests go to the next replica, and with all of them
  full, a clean 503 with Retry-After;
- a shared long system prompt stays on one replica, and leaves it when that
  replica's load becomes too uneven;
- the router's /metrics, the admin API and the dashboard's engines page show it all.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ROOT, RunningMesh, free_ports
from tests.support import metric
from tests.test_dashboard import sign_in

SPREAD, CAPPED, AFFINE = "paced/spread", "paced/capped", "paced/affine"
KINDS = ("vllm", "vllm", "sglang")  # the three engines, in order
POLL_S = 0.2
SYSTEM = (
    "You are the support assistant of ACME Parcels. Answer in two sentences, politely, "
    "and never promise a delivery date you cannot see in the tracking record. "
) * 12


@dataclass
class Engines:
    mesh: RunningMesh
    origins: list[str]
    router_metrics: int

    def control(self, i: int, **order: Any) -> None:
        httpx.post(f"{self.origins[i]}/__control", json=order, timeout=5).raise_for_status()

    def stats(self, i: int) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.origins[i]}/__stats", timeout=5).json()
        return answer

    def requests(self) -> list[int]:
        return [self.stats(i)["requests"] for i in range(len(self.origins))]

    def target(self, i: int) -> str:
        return f'target="{self.origins[i]}/v1"'

    def router(self, name: str, label: str = "") -> float:
        return metric(self.router_metrics, name, label)

    def until(self, check: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting until {what}"
            time.sleep(0.05)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.mesh.base_url, api_key=self.mesh.api_key, max_retries=0)


def _start(kind: str, port: int, slots: int, token_ms: float) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "bench/paced_engine.py", "--port", str(port), "--kind", kind]
    argv += ["--slots", str(slots), "--token-ms", str(token_ms)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/__stats", timeout=1)
            return proc
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, f"{argv} did not start"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def engines(start_mesh: Any) -> Iterator[Engines]:
    *ports, router_metrics = free_ports(len(KINDS) + 1)
    procs = [_start(kind, port, 4, 5) for kind, port in zip(KINDS, ports, strict=True)]
    origins = [f"http://127.0.0.1:{p}" for p in ports]

    def engine(origin: str, name: str, **extra: Any) -> dict[str, Any]:
        metrics = {"interval_s": POLL_S, "stale_after_s": 1.0}
        return {
            "kind": "openai_http",
            "url": f"{origin}/v1",
            "model": name,
            "metrics": metrics,
            **extra,
        }

    models = [
        {"id": SPREAD, "engines": [engine(o, "spread") for o in origins]},
        # Their own replicas (another engine model name): at most one request each at once.
        {"id": CAPPED, "engines": [engine(o, "capped", max_concurrency=1) for o in origins[:2]]},
        {"id": AFFINE, "engines": [engine(o, "affine") for o in origins]},
    ]
    router = {
        "metrics_port": router_metrics,
        "queue_timeout_s": 0.5,
        "affinity": {"balance_abs_threshold": 4, "balance_rel_threshold": 1.5},
    }
    try:  # the engines stop even when the mesh never started
        mesh = start_mesh(models=models, services={"router": router}, ledger={"enabled": False})
        try:
            yield Engines(mesh, origins, router_metrics)
        finally:
            assert mesh.stop() == 0, mesh.output()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def calm(engines: Engines) -> Iterator[Engines]:
    """Every engine reports its real load and answers /metrics, before and after the test."""
    for i in range(len(engines.origins)):
        engines.control(i, metrics="live", report=None)
    yield engines
    for i in range(len(engines.origins)):
        engines.control(i, metrics="live", report=None)


def _ask(
    client: openai.OpenAI, model: str, question: str, system: str = "", tokens: int = 4
) -> str:
    messages: list[Any] = [{"role": "user", "content": question}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    answer = client.chat.completions.create(model=model, messages=messages, max_tokens=tokens)
    return answer.choices[0].message.content or ""


def _sent(engines: Engines, send: Callable[[], None], n: int) -> list[int]:
    """How many of `n` requests each engine received."""
    before = engines.requests()
    for _ in range(n):
        send()
    return [after - b for after, b in zip(engines.requests(), before, strict=True)]


def test_a_replica_reporting_a_deep_queue_or_a_full_kv_cache_gets_no_new_requests(
    calm: Engines,
) -> None:
    calm.control(0, report={"waiting": 40, "running": 8, "kv": 0.5})
    calm.control(2, report={"waiting": 0, "running": 2, "kv": 0.97})
    calm.until(
        lambda: calm.router("meshgate_router_replica_waiting", calm.target(0)) == 40,
        "the router read engine 0's queue",
    )
    calm.until(
        lambda: calm.router("meshgate_router_replica_kv_cache_usage", calm.target(2)) == 0.97,
        "the router read engine 2's KV use (SGLang's token_usage)",
    )
    with calm.client() as client:
        got = _sent(calm, lambda: _ask(client, SPREAD, "hi") and None, 20)
    print(f"\n20 requests; engine 0 reports 40 waiting, engine 2 97 % KV: {got}")
    assert got == [0, 20, 0]


def test_a_metrics_page_that_stops_answering_counts_as_saturated(calm: Engines) -> None:
    calm.control(1, metrics="hang")  # idle, but no longer says so
    calm.until(
        lambda: calm.router("meshgate_router_replica_signal_saturated", calm.target(1)) == 1,
        "engine 1's signal went stale",
    )
    # A read that fails makes the signal stale at once; its age is that of the last good one.
    age = calm.router("meshgate_router_replica_signal_age_seconds", calm.target(1))
    assert age > POLL_S
    with calm.client() as client:
        got = _sent(calm, lambda: _ask(client, SPREAD, "hi") and None, 12)
    print(f"\n12 requests while engine 1's /metrics hangs: {got}")
    assert got[1] == 0 and got[0] + got[2] == 12
    calm.control(1, metrics="live")
    calm.until(
        lambda: calm.router("meshgate_router_replica_signal_saturated", calm.target(1)) == 0,
        "engine 1's signal is fresh again",
    )


def test_past_max_concurrency_the_next_replica_then_a_clean_503_with_retry_after(
    calm: Engines,
) -> None:
    body = {
        "model": CAPPED,
        "messages": [{"role": "user", "content": "a long answer"}],
        "max_tokens": 300,  # 300 tokens at 5 ms: 1.5 s each
    }
    headers = {"Authorization": f"Bearer {calm.mesh.api_key}"}
    statuses: list[int] = []

    def long_call() -> None:
        with httpx.Client(base_url=calm.mesh.origin, timeout=30, headers=headers) as http:
            statuses.append(http.post("/v1/chat/completions", json=body).status_code)

    before = calm.requests()
    holders = [threading.Thread(target=long_call) for _ in range(2)]
    for thread in holders:
        thread.start()
    calm.until(
        lambda: (
            calm.router("meshgate_router_replica_outstanding", calm.target(0)) >= 1
            and calm.router("meshgate_router_replica_outstanding", calm.target(1)) >= 1
        ),
        "both capped replicas hold one request",
    )
    with httpx.Client(base_url=calm.mesh.origin, timeout=30, headers=headers) as http:
        started = time.monotonic()
        refused = http.post("/v1/chat/completions", json={**body, "max_tokens": 1})
        waited = time.monotonic() - started
    for thread in holders:
        thread.join()
    got = [after - b for after, b in zip(calm.requests(), before, strict=True)]
    print(
        f"\ntwo long requests on two replicas of max_concurrency 1: {got}; a third: "
        f"{refused.status_code} after {waited:.2f} s, Retry-After {refused.headers.get('retry-after')}"
    )
    assert got[:2] == [1, 1], "the second request went to the next replica"
    assert statuses == [200, 200]
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("server_error", None, None)
    assert "at capacity" in error["message"]
    assert refused.headers["retry-after"] == "1"
    assert 0.4 < waited < 1.4, "the bounded wait is queue_timeout_s (0.5 s)"
    assert calm.router("meshgate_router_capacity_rejections_total", f'model="{CAPPED}"') >= 1


def test_a_shared_system_prompt_stays_on_one_replica_until_its_load_is_too_uneven(
    calm: Engines,
) -> None:
    with calm.client() as client:
        first = _sent(calm, lambda: _ask(client, AFFINE, "Where is parcel 1?", SYSTEM) and None, 1)
        home = first.index(1)
        questions = iter(f"Where is parcel {n}?" for n in range(2, 100))
        got = _sent(calm, lambda: _ask(client, AFFINE, next(questions), SYSTEM) and None, 12)
        print(f"\n12 requests sharing a {len(SYSTEM)}-character system prompt: {got}")
        assert got[home] == 12
        affinity = calm.router(
            "meshgate_router_decisions_total", f'model="{AFFINE}",reason="affinity"'
        )
        assert affinity >= 12

        # Other prompts still spread over the replicas.
        others = iter(f"{n} is my lucky number. " * 30 for n in range(100))
        spread = _sent(calm, lambda: _ask(client, AFFINE, "hi", next(others)) and None, 12)
        print(f"12 requests with distinct system prompts: {spread}")
        assert sum(1 for n in spread if n) >= 2

        # The home replica gets a deep queue: past the thresholds (4 requests, 1.5x) affinity yields.
        calm.control(home, report={"waiting": 12, "running": 4, "kv": 0.3})
        calm.until(
            lambda: calm.router("meshgate_router_replica_waiting", calm.target(home)) == 12,
            "the router read the home replica's queue",
        )
        moved = _sent(calm, lambda: _ask(client, AFFINE, next(questions), SYSTEM) and None, 6)
        print(f"6 more with the home replica 12 deep: {moved}")
        assert moved[home] == 0
    assert calm.router("meshgate_router_decisions_total", f'model="{AFFINE}",reason="yield"') >= 1


def test_metrics_admin_api_and_engines_page_show_signals_scores_and_decisions(
    calm: Engines,
) -> None:
    calm.control(0, report={"waiting": 3, "running": 2, "kv": 0.25})
    calm.until(
        lambda: calm.router("meshgate_router_replica_waiting", calm.target(0)) == 3,
        "the router read engine 0",
    )
    with calm.client() as client:
        _ask(client, SPREAD, "hi")
    text = httpx.get(f"http://127.0.0.1:{calm.router_metrics}/metrics", timeout=5).text
    for series in (
        f'meshgate_router_replica_waiting{{kind="vllm",{calm.target(0)}}} 3.0',
        f'meshgate_router_replica_running{{kind="sglang",{calm.target(2)}}}',
        f'meshgate_router_replica_kv_cache_usage{{kind="vllm",{calm.target(0)}}} 0.25',
        f'meshgate_router_replica_signal_age_seconds{{kind="vllm",{calm.target(1)}}}',
        f'meshgate_router_replica_signal_saturated{{kind="vllm",{calm.target(1)}}} 0.0',
        f'meshgate_router_replica_score{{model="{SPREAD}",{calm.target(1)}}}',
        f"meshgate_router_replica_outstanding{{{calm.target(1)}}}",
        f'meshgate_router_decisions_total{{model="{SPREAD}",reason="load"}}',
        f'meshgate_router_signal_polls_total{{outcome="ok",{calm.target(0)}}}',
        "meshgate_router_affinity_entries ",
    ):
        assert series in text, series

    mesh = calm.mesh
    models = httpx.get(
        f"{mesh.admin_origin}/admin/v1/models",
        headers={"Authorization": f"Bearer {mesh.admin_key}"},
        timeout=10,
    ).json()["data"]
    spread = next(m for m in models if m["id"] == SPREAD)
    first = next(r for r in spread["replicas"] if r["target"] == f"{calm.origins[0]}/v1")
    assert first["signals"]["state"] == "fresh" and first["signals"]["kind"] == "vllm"
    assert (first["signals"]["waiting"], first["signals"]["kv_cache_usage"]) == (3, 0.25)
    assert first["signals"]["age_seconds"] < 2 and first["score"] > 0
    assert spread["decisions"]["load"] >= 1
    capped = next(m for m in models if m["id"] == CAPPED)
    assert [r["max_concurrency"] for r in capped["replicas"]] == [1, 1]

    with httpx.Client(base_url=mesh.admin_origin, timeout=10) as browser:
        sign_in(browser, mesh.admin_key)
        page = browser.get("/engines")
    assert page.status_code == 200, page.text[:3000]
    assert "vllm ·" in page.text and "sglang ·" in page.text
    assert "Routing decisions:" in page.text and "load " in page.text
    assert "25 %" in page.text  # engine 0's KV cache
