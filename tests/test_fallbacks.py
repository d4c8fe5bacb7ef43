"""Model fallbacks: when the model asked for cannot answer before its first token, the
next model of its chain does, and the client, the header and the ledger all say which.

One mesh for the module. Two fake llama.cpp servers (tests/fake_engine.py) serve
`fb/primary` and `fb/second`, and can be made to fail (500), refuse (429), hang or
die midway; `fb/third` and the others are the built-in reference engine; `fb/dead`
names an engine that is not there.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import yaml

from meshgate import fallbacks
from meshgate.config import SAMPLE_CONFIG, ModelConfig
from meshgate.pricing import PriceBook
from meshgate.v1 import common_pb2
from tests.conftest import ROOT, RunningMesh, free_ports, meshgate_cmd, subprocess_env
from tests.support import ledger_records, metric

PRIMARY, SECOND, THIRD = "fb/primary", "fb/second", "fb/third"
DEAD, SMALL, TOOLS, TOOLS_OK = "fb/dead", "fb/small", "fb/tools", "fb/tools-ok"
EMBED_DEAD, EMBED_WIDE = "fb/embed-dead", "fb/embed-wide"
ALIAS = "fast"
OVERRIDE_SECRET = "sk-fallbacks-override-key"
NARROW_SECRET = "sk-fallbacks-narrow-key"
BUDGET_SECRET = "sk-fallbacks-budget-key"
BUDGET_USD = Decimal("1")
PRIMARY_TIMEOUT_S = 1.5
REQUEST_TIMEOUT_S = 8.0  # the mesh's one deadline per request (edge.request_timeout_s)
FALLBACKS = "meshgate_router_fallbacks_total"
SKIPPED = "meshgate_router_fallbacks_skipped_total"
# USD per million tokens: the second is the dearest, so a fallback to it costs more.
PRICES = {
    PRIMARY: (Decimal("1"), Decimal("2")),
    SECOND: (Decimal("3"), Decimal("7")),
    THIRD: (Decimal("0.5"), Decimal("0.5")),
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


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
class Fallbacks:
    mesh: RunningMesh
    engines: list[str]  # origins of the fakes behind PRIMARY and SECOND
    router_metrics: int

    def mode(self, i: int, mode: str) -> None:
        httpx.post(f"{self.engines[i]}/__control", json={"mode": mode}, timeout=5)

    def healthy(self, i: int) -> bool:
        target = f'target="{self.engines[i]}/v1"'
        return metric(self.router_metrics, "meshgate_router_replica_healthy", target) == 1

    def reset(self) -> None:
        """Both fakes answer again and are back in rotation."""
        for i in (0, 1):
            self.mode(i, "replay")
        deadline = time.monotonic() + 10
        while not (self.healthy(0) and self.healthy(1)):
            assert time.monotonic() < deadline, "the fakes were not re-admitted"
            time.sleep(0.2)

    def taken(self, source: str, to: str, reason: str) -> float:
        return metric(
            self.router_metrics, FALLBACKS, f'from="{source}",reason="{reason}",to="{to}"'
        )

    def client(self, secret: str = "") -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.mesh.base_url, api_key=secret or self.mesh.api_key, max_retries=0
        )

    def http(self, secret: str = "") -> httpx.Client:
        headers = {"Authorization": f"Bearer {secret or self.mesh.api_key}"}
        return httpx.Client(base_url=self.mesh.origin, timeout=30, headers=headers)


def _model(model_id: str, engines: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"id": model_id, "category": "text", "engines": engines, **fields}


def _pricing(model_id: str) -> dict[str, str]:
    given, made = PRICES[model_id]
    return {"input_per_mtok": str(given), "output_per_mtok": str(made)}


@pytest.fixture(scope="module")
def fb(start_mesh: Any) -> Iterator[Fallbacks]:
    f0, f1, dead, router_metrics = free_ports(4)
    procs = [
        _start(
            [sys.executable, "-m", "tests.fake_engine", "--port", str(p)],
            f"http://127.0.0.1:{p}/__stats",
        )
        for p in (f0, f1)
    ]
    engines = [f"http://127.0.0.1:{p}" for p in (f0, f1)]

    def http(origin: str) -> dict[str, str]:
        return {"kind": "openai_http", "url": f"{origin}/v1", "model": "smollm2"}

    reference = [{"kind": "grpc"}]
    nowhere = [http(f"http://127.0.0.1:{dead}")]
    models = yaml.safe_load(SAMPLE_CONFIG.read_text())["models"] + [
        _model(
            PRIMARY,
            [http(engines[0])],
            fallbacks=[SECOND, THIRD],
            timeout_s=PRIMARY_TIMEOUT_S,
            pricing=_pricing(PRIMARY),
        ),
        _model(SECOND, [http(engines[1])], pricing=_pricing(SECOND)),
        _model(THIRD, reference, aliases=[ALIAS], pricing=_pricing(THIRD)),
        _model(DEAD, nowhere, fallbacks=[THIRD]),
        _model(SMALL, reference, context_length=64, context_fallbacks=True, fallbacks=[THIRD]),
        _model(TOOLS, nowhere, capabilities=["tool_use"], fallbacks=[THIRD, TOOLS_OK]),
        _model(TOOLS_OK, reference, capabilities=["tool_use"]),
        {
            "id": EMBED_DEAD,
            "category": "embeddings",
            "dimensions": 1024,
            "engines": nowhere,
            "fallbacks": ["bge-m3"],
        },
        {
            "id": EMBED_WIDE,
            "category": "embeddings",
            "dimensions": 2048,
            "engines": nowhere,
            "fallbacks": ["bge-m3"],  # 1024 dimensions only
        },
    ]
    keys = yaml.safe_load(SAMPLE_CONFIG.read_text())["keys"] + [
        {"name": "override", "secret": OVERRIDE_SECRET, "fallbacks": {DEAD: [TOOLS_OK]}},
        {"name": "narrow", "secret": NARROW_SECRET, "models": [TOOLS, TOOLS_OK]},
        {"name": "budget", "secret": BUDGET_SECRET, "budget_usd": str(BUDGET_USD)},
    ]
    try:  # the engines stop even when the mesh never started
        mesh = start_mesh(
            models=models,
            keys=keys,
            services={"router": {"metrics_port": router_metrics}},
            edge={"request_timeout_s": REQUEST_TIMEOUT_S},
        )
        try:
            yield Fallbacks(mesh, engines, router_metrics)
        finally:
            assert mesh.stop() == 0
    finally:
        for proc in procs:
            proc.kill()  # a hung request would hold uvicorn's graceful shutdown for a minute
            proc.wait(10)


def _ask(model: str, content: str = "Say hello.", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


# ------------------------------------------------------------- triggers ----


@pytest.mark.parametrize(
    ("mode", "reason"), [("fail", "engine_error"), ("busy", "rate_limited")], ids=["5xx", "429"]
)
def test_an_engine_5xx_or_429_falls_back_to_the_next_model(
    fb: Fallbacks, mode: str, reason: str
) -> None:
    fb.mode(0, mode)
    try:
        before = fb.taken(PRIMARY, SECOND, reason)
        with fb.http() as http:
            answer = http.post("/v1/chat/completions", json=_ask(PRIMARY))
            streamed = http.post("/v1/chat/completions", json=_ask(PRIMARY, stream=True))
        assert answer.status_code == streamed.status_code == 200, answer.text
        assert answer.json()["model"] == SECOND
        assert answer.headers["x-meshgate-model"] == streamed.headers["x-meshgate-model"] == SECOND
        first = json.loads(streamed.text.split("\n\n")[0].removeprefix("data: "))
        assert first["model"] == SECOND and streamed.text.endswith("data: [DONE]\n\n")
        assert fb.taken(PRIMARY, SECOND, reason) >= before + 1
    finally:
        fb.reset()


def test_fallbacks_are_tried_in_order(fb: Fallbacks) -> None:
    fb.mode(0, "fail")
    fb.mode(1, "fail")
    try:
        with fb.client() as client:
            reply = client.chat.completions.create(**_ask(PRIMARY))
            chunks = list(client.chat.completions.create(**_ask(PRIMARY), stream=True))
        assert reply.model == THIRD
        assert {c.model for c in chunks} == {THIRD}
        assert fb.taken(SECOND, THIRD, "engine_error") >= 1
    finally:
        fb.reset()


def test_a_model_past_its_timeout_falls_back_within_the_deadline(fb: Fallbacks) -> None:
    fb.mode(0, "hang")
    try:
        with fb.http() as http:
            started = time.monotonic()
            answer = http.post("/v1/chat/completions", json=_ask(PRIMARY))
            streamed = http.post("/v1/chat/completions", json=_ask(PRIMARY, stream=True))
            took = time.monotonic() - started
        assert answer.status_code == streamed.status_code == 200, answer.text
        assert answer.headers["x-meshgate-model"] == streamed.headers["x-meshgate-model"] == SECOND
        # Two requests, each waiting out the primary's timeout once (a minute if it did not).
        assert 2 * PRIMARY_TIMEOUT_S <= took < 2 * PRIMARY_TIMEOUT_S + 20
        assert fb.taken(PRIMARY, SECOND, "timeout") >= 2
    finally:
        fb.reset()


def test_the_chain_shares_the_requests_one_deadline(fb: Fallbacks) -> None:
    """The primary's timeout_s passes, the second (no timeout_s of its own) hangs until the
    request's deadline: a 504 then, and the third is never tried."""
    fb.mode(0, "hang")
    fb.mode(1, "hang")
    try:
        before = fb.taken(SECOND, THIRD, "timeout")
        with fb.client() as client:
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(**_ask(PRIMARY), timeout=60)
            took = time.monotonic() - started
        assert info.value.status_code == 504
        assert REQUEST_TIMEOUT_S - 1 < took < REQUEST_TIMEOUT_S + 5
        assert fb.taken(PRIMARY, SECOND, "timeout") >= 1
        assert fb.taken(SECOND, THIRD, "timeout") == before
    finally:
        fb.reset()


def test_no_healthy_replica_falls_back(fb: Fallbacks) -> None:
    """The first call finds the engine unreachable and ejects it; later ones skip it."""
    with fb.client() as client:
        replies = [client.chat.completions.create(**_ask(DEAD)) for _ in range(3)]
    assert [r.model for r in replies] == [THIRD] * 3
    assert fb.taken(DEAD, THIRD, "no_healthy_replica") >= 1


def test_a_prompt_too_long_goes_to_a_fallback_with_a_larger_context(fb: Fallbacks) -> None:
    long = "lighthouse " * 100  # about 100 tokens: more than fb/small's 64
    with fb.client() as client:
        reply = client.chat.completions.create(**_ask(SMALL, long))
        short = client.chat.completions.create(**_ask(SMALL))
        with pytest.raises(openai.BadRequestError) as info:  # no fallback is that large
            client.chat.completions.create(**_ask(SMALL, "lighthouse " * 9000))
        with pytest.raises(openai.BadRequestError) as plain:  # no context_fallbacks on THIRD
            client.chat.completions.create(**_ask(THIRD, "lighthouse " * 9000))
    assert (reply.model, short.model) == (THIRD, SMALL)
    assert fb.taken(SMALL, THIRD, "context") >= 1
    for error in (info.value, plain.value):
        assert error.status_code == 400
        assert (error.code, error.param) == ("context_length_exceeded", "messages")


def test_a_stream_that_fails_after_its_first_chunk_is_an_error_event_not_a_fallback(
    fb: Fallbacks,
) -> None:
    fb.mode(0, "break")
    try:
        before = sum(fb.taken(PRIMARY, to, "engine_error") for to in (SECOND, THIRD))
        with fb.http() as http:
            streamed = http.post("/v1/chat/completions", json=_ask(PRIMARY, stream=True))
        assert streamed.status_code == 200
        assert streamed.headers["x-meshgate-model"] == PRIMARY
        events = [e.removeprefix("data: ") for e in streamed.text.split("\n\n") if e]
        assert json.loads(events[0])["model"] == PRIMARY
        error = json.loads(events[-1])["error"]
        assert (error["type"], error["code"]) == ("server_error", None)
        assert "[DONE]" not in events
        assert sum(fb.taken(PRIMARY, to, "engine_error") for to in (SECOND, THIRD)) == before
    finally:
        fb.reset()


# -------------------------------------------------------------- who may ----


def test_a_fallback_without_a_capability_the_request_needs_is_skipped(fb: Fallbacks) -> None:
    skipped = metric(fb.router_metrics, SKIPPED, f'from="{TOOLS}",to="{THIRD}"')
    with fb.client() as client:
        with_tools = client.chat.completions.create(**_ask(TOOLS), tools=[WEATHER])
        without = client.chat.completions.create(**_ask(TOOLS))
    assert with_tools.model == TOOLS_OK  # THIRD has no tool_use
    assert without.model == THIRD
    assert metric(fb.router_metrics, SKIPPED, f'from="{TOOLS}",to="{THIRD}"') >= skipped + 1


def test_an_embeddings_fallback_with_fewer_dimensions_than_asked_is_skipped(
    fb: Fallbacks,
) -> None:
    """Vectors of another size would be garbage to the caller: no answer is better."""
    with fb.client() as client:
        with pytest.raises(openai.InternalServerError) as info:  # 2048, the model's native
            client.embeddings.create(model=EMBED_WIDE, input="a")
        fits = client.embeddings.create(model=EMBED_WIDE, input="a", dimensions=512)
    assert info.value.status_code == 503
    assert fits.model == "bge-m3" and len(fits.data[0].embedding) == 512
    assert metric(fb.router_metrics, SKIPPED, f'from="{EMBED_WIDE}",to="bge-m3"') >= 1


def test_a_keys_own_fallbacks_win_over_the_catalogs(fb: Fallbacks) -> None:
    with fb.client(OVERRIDE_SECRET) as client:
        assert client.chat.completions.create(**_ask(DEAD)).model == TOOLS_OK
    with fb.client() as client:
        assert client.chat.completions.create(**_ask(DEAD)).model == THIRD


def test_a_fallback_the_key_may_not_use_is_skipped(fb: Fallbacks) -> None:
    with fb.client(NARROW_SECRET) as client:
        assert client.chat.completions.create(**_ask(TOOLS)).model == TOOLS_OK


# --------------------------------------------------- every endpoint says ----


def test_every_endpoint_names_the_model_that_served(fb: Fallbacks) -> None:
    with fb.http() as http:
        answers = {
            "completions": http.post("/v1/completions", json={"model": DEAD, "prompt": "Once"}),
            "completions stream": http.post(
                "/v1/completions", json={"model": DEAD, "prompt": "Once", "stream": True}
            ),
            "responses": http.post("/v1/responses", json={"model": DEAD, "input": "Hi"}),
            "responses stream": http.post(
                "/v1/responses", json={"model": DEAD, "input": "Hi", "stream": True}
            ),
            "embeddings": http.post("/v1/embeddings", json={"model": EMBED_DEAD, "input": "a"}),
        }
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
        served = "bge-m3" if name == "embeddings" else THIRD
        assert answer.headers["x-meshgate-model"] == served, name
        if not name.endswith("stream"):
            assert answer.json()["model"] == served, name
    completed = [e for e in answers["responses stream"].text.split("\n\n") if "completed" in e]
    assert json.loads(completed[-1].split("data: ", 1)[1])["response"]["model"] == THIRD
    assert json.loads(answers["completions stream"].text.split("\n\n")[0][6:])["model"] == THIRD


def test_an_alias_resolves_to_its_model(fb: Fallbacks) -> None:
    with fb.client() as client:
        reply = client.chat.completions.create(**_ask(ALIAS))
        card = client.models.retrieve(ALIAS)
        listed = [m.id for m in client.models.list()]
    assert reply.model == card.id == THIRD
    assert THIRD in listed and ALIAS not in listed  # the list names each model once, by id
    headers = {"Authorization": f"Bearer {fb.mesh.admin_key}"}
    models = httpx.get(f"{fb.mesh.admin_origin}/admin/v1/models", headers=headers).json()
    by_id = {m["id"]: m for m in models["data"]}
    assert by_id[THIRD]["aliases"] == [ALIAS]  # operators see them
    assert by_id[PRIMARY]["fallbacks"] == [SECOND, THIRD]


# ---------------------------------------------------------------- billing ----


def test_the_ledger_and_the_budget_price_the_model_that_served(fb: Fallbacks) -> None:
    fb.mode(0, "fail")
    try:
        with fb.http(BUDGET_SECRET) as http:
            answer = http.post("/v1/chat/completions", json=_ask(PRIMARY, max_tokens=50))
        with fb.http() as http:
            direct = http.post("/v1/chat/completions", json=_ask(THIRD, max_tokens=50))
        assert answer.headers["x-meshgate-model"] == SECOND
    finally:
        fb.reset()
    fell, straight = answer.headers["x-request-id"], direct.headers["x-request-id"]
    records = ledger_records(fb.mesh, fell, straight)
    record = records[fell]
    assert (record["model"], record["requested_model"]) == (SECOND, PRIMARY)
    assert (records[straight]["model"], records[straight]["requested_model"]) == (THIRD, "")
    given, made = PRICES[SECOND]
    prompt, completion = record["prompt_tokens"], record["completion_tokens"]
    assert completion > 0
    cost = (prompt * given + completion * made) / 10**6
    assert Decimal(str(record["cost_usd"])) == cost
    # Reserved at the dearest model of the chain (SECOND, on both prices), so that a budget
    # holds whichever model answers: validation's prompt count plus the 50 allowed.
    counted = record["reserved_tokens"] - 50
    assert Decimal(str(record["reserved_usd"])) == (counted * given + 50 * made) / 10**6
    # The budget was charged the serving model's price, to the micro-dollar.
    with fb.http(BUDGET_SECRET) as http:
        deadline = time.monotonic() + 10
        while True:  # settling happens off the request path
            left = Decimal(http.get("/v1/models").headers["x-ratelimit-remaining-budget-usd"])
            if left == BUDGET_USD - cost or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert left == BUDGET_USD - cost


# ------------------------------------------------ a key's own, managed ----


def _until(check: Any, timeout: float = 10) -> Any:
    """`check()` once it is truthy: key changes reach every cache within a second or so."""
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


def test_the_admin_api_sets_a_keys_fallbacks(fb: Fallbacks) -> None:
    mesh = fb.mesh
    keys = f"{mesh.admin_origin}/admin/v1/keys"
    headers = {"Authorization": f"Bearer {mesh.admin_key}"}
    with httpx.Client(headers=headers, timeout=30) as admin:
        refused = admin.post(keys, json={"name": "bad", "fallbacks": {DEAD: ["fb/nope"]}})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "fallbacks"
        created = admin.post(keys, json={"name": "own", "fallbacks": {DEAD: [TOOLS_OK]}})
        assert created.status_code == 201, created.text
        key = created.json()
        assert key["fallbacks"] == {DEAD: [TOOLS_OK]}
        with fb.client(key["secret"]) as client:
            assert client.chat.completions.create(**_ask(DEAD)).model == TOOLS_OK
            patched = admin.patch(f"{keys}/{key['id']}", json={"fallbacks": {}})
            assert patched.status_code == 200 and patched.json()["fallbacks"] == {}
            back = _until(lambda: client.chat.completions.create(**_ask(DEAD)).model == THIRD)
    assert back, "the key kept its own fallbacks after they were removed"


def test_keys_create_and_update_set_a_keys_fallbacks(fb: Fallbacks) -> None:
    redis_url = re.search(r"embedded redis at (\S+)", fb.mesh.stderr())
    assert redis_url, fb.mesh.output()

    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            meshgate_cmd("keys", *args),
            env=subprocess_env({"REDIS_URL": redis_url.group(1)}),
            capture_output=True,
            text=True,
            timeout=30,
        )

    created = keys("create", "--name", "cli-own", "--fallbacks", f"{DEAD}={TOOLS_OK}")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    key_id = created.stderr.split()[1]
    with fb.client(secret) as client:
        assert client.chat.completions.create(**_ask(DEAD)).model == TOOLS_OK
        updated = keys("update", key_id, "--fallbacks", f"{DEAD}=")  # none at all
        assert updated.returncode == 0, updated.stderr
        assert f"fallbacks={DEAD}=" in updated.stdout

        def refused() -> bool:
            try:
                client.chat.completions.create(**_ask(DEAD))
            except openai.InternalServerError as exc:
                return exc.status_code == 503
            return False

        assert _until(refused), "the key still fell back after its fallbacks were emptied"


# ------------------------------------------------------------ the rules ----


def _catalog() -> list[ModelConfig]:
    """PRIMARY falls back to SECOND, then THIRD, each at its PRICES."""
    chains = {PRIMARY: [SECOND, THIRD]}
    return [
        ModelConfig.model_validate(
            {
                "id": name,
                "engines": [{"kind": "grpc"}],
                "pricing": _pricing(name),
                "fallbacks": chains.get(name, []),
            }
        )
        for name in PRICES
    ]


@pytest.mark.parametrize(
    ("principal", "chain"),
    [
        (common_pb2.Principal(), (SECOND, THIRD)),
        (common_pb2.Principal(allowed_models=[PRIMARY, THIRD]), (THIRD,)),
        (
            common_pb2.Principal(fallbacks={PRIMARY: common_pb2.ModelFallbacks(models=[THIRD])}),
            (THIRD,),
        ),
        (common_pb2.Principal(fallbacks={PRIMARY: common_pb2.ModelFallbacks()}), ()),
        (common_pb2.Principal(fallbacks={SECOND: common_pb2.ModelFallbacks()}), (SECOND, THIRD)),
    ],
    ids=["catalog", "allowance", "key's own", "key's none", "other model's"],
)
def test_the_chain_is_the_keys_own_else_the_catalogs_less_what_it_may_not_use(
    principal: common_pb2.Principal, chain: tuple[str, ...]
) -> None:
    assert fallbacks.chain(_catalog()[0], principal) == chain


def test_admission_reserves_at_the_dearest_model_of_the_chain() -> None:
    book = PriceBook(_catalog())
    everyone, only_third = (
        common_pb2.Principal(),
        common_pb2.Principal(fallbacks={PRIMARY: common_pb2.ModelFallbacks(models=[THIRD])}),
    )
    dearest = book.get(SECOND).worst_case(100, 50)
    assert book.worst_case(PRIMARY, everyone, 100, 50) == dearest
    assert book.worst_case(PRIMARY, only_third, 100, 50) == book.get(PRIMARY).worst_case(100, 50)
    assert book.worst_case("not-in-the-catalog", everyone, 100, 50) == 0
