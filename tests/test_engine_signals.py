"""Engine load signals and the balancer that reads them, without a mesh.

The parsers read the pages in tests/fixtures/engine_metrics/ (written from the
engines' sources, see its README) and, once recorded, real llama-server pages in
tests/fixtures/llama_server/. The fake engine of the routing tests and the
benchmark (bench/paced_engine.py) is checked against the same fixtures, so it
cannot drift from what the engines send.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import paced_engine
from meshgate.config import RouterServiceConfig
from meshgate.errors import ApiError
from meshgate.v1 import inference_pb2
from services.router.adapters.openai_http import llama_cpp
from services.router.adapters.openai_http.probe import MetricsProbe, metrics_url, parse
from services.router.affinity import prefix_blocks
from services.router.balancer import Balancer, Replica, estimate
from services.router.signals import Load, Poller, ProbeFailed, Signal

FIXTURES = Path(__file__).parent / "fixtures" / "engine_metrics"
RECORDED = Path(__file__).parent / "fixtures" / "llama_server"


# ---------------------------------------------------------------- parsers ----


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("vllm.txt", Load("vllm", waiting=3, running=7, kv_usage=0.42)),
        ("sglang.txt", Load("sglang", waiting=5, running=12, kv_usage=0.61)),
        # Two data-parallel cores: queues add up, cache use is their mean.
        ("sglang_underscore_dp.txt", Load("sglang", waiting=3, running=10, kv_usage=0.3)),
        ("llama_server.txt", Load("llama_cpp", waiting=3, running=2, kv_usage=None)),
    ],
)
def test_each_engine_kind_is_detected_and_read_from_its_own_page(page: str, expected: Load) -> None:
    load = parse((FIXTURES / page).read_text())
    assert load is not None
    assert load.kind == expected.kind
    assert (load.waiting, load.running) == (expected.waiting, expected.running)
    assert load.kv_usage == pytest.approx(expected.kv_usage)
    # Named explicitly, the same page reads the same.
    assert parse((FIXTURES / page).read_text(), expected.kind) == load


def test_a_vllm_before_0_9_reports_kv_use_under_the_old_name() -> None:
    text = (FIXTURES / "vllm.txt").read_text()
    old = "\n".join(line for line in text.splitlines() if "kv_cache_usage_perc" not in line)
    load = parse(old)
    assert load is not None and load.kv_usage == pytest.approx(0.41)


def test_a_page_of_another_kind_or_none_has_no_load() -> None:
    assert parse((FIXTURES / "sglang.txt").read_text(), "vllm") is None
    assert parse("# HELP up 1 if up\n# TYPE up gauge\nup 1\n") is None
    assert parse("<html>not metrics</html>") is None


def test_a_malformed_page_is_an_error_not_an_idle_engine() -> None:
    with pytest.raises(ValueError):
        parse("vllm:num_requests_waiting{engine=0 3\nvllm:num_requests_running 1\n")


def test_slots_count_busy_slots() -> None:
    body = json.loads((FIXTURES / "llama_server_slots.json").read_text())
    assert llama_cpp.slot_counts(body) == (4, 2)
    load = parse((FIXTURES / "llama_server.txt").read_text(), "llama_cpp", slots=(4, 2))
    assert load is not None and (load.slots, load.busy_slots) == (4, 2)
    with pytest.raises(ValueError):
        llama_cpp.slot_counts({"error": "not supported"})


def test_metrics_live_at_the_engines_root() -> None:
    assert metrics_url("http://10.0.0.5:8000/v1") == "http://10.0.0.5:8000/metrics"
    assert metrics_url("http://h:8000/v1/") == "http://h:8000/metrics"
    assert metrics_url("https://h/engine/v1") == "https://h/engine/metrics"


def _recorded_pages() -> list[Path]:
    return sorted(RECORDED.glob("*metrics*.txt")) if RECORDED.is_dir() else []


@pytest.mark.skipif(not _recorded_pages(), reason="no real llama-server pages recorded yet")
@pytest.mark.parametrize("page", _recorded_pages(), ids=lambda p: p.name)
def test_real_llama_server_pages_parse(page: Path) -> None:
    load = parse(page.read_text())
    assert load is not None and load.kind == "llama_cpp"
    assert load.waiting >= 0 and load.running >= 0


def _recorded(name: str) -> Path:
    path = RECORDED / name
    if not path.exists():
        pytest.skip(f"tests/fixtures/llama_server/{name} not recorded yet")
    return path


def test_a_real_busy_llama_server_reads_as_one_running_and_one_deferred() -> None:
    load = parse(_recorded("metrics_busy.txt").read_text())
    slots = llama_cpp.slot_counts(json.loads(_recorded("slots_busy.json").read_text()))
    assert load is not None and (load.running, load.waiting) == (1, 1)
    assert slots == (1, 1)
    idle = parse(_recorded("metrics_idle.txt").read_text())
    assert idle is not None and (idle.running, idle.waiting) == (0, 0)


def test_a_real_llama_server_without_metrics_is_an_engine_without_signals() -> None:
    answer = json.loads(_recorded("metrics_disabled.json").read_text())
    probe = MetricsProbe("http://127.0.0.1:1/v1")
    body = answer["body"] if isinstance(answer["body"], str) else json.dumps(answer["body"])
    probe._get = _answers((answer["status"], body.encode()))  # type: ignore[method-assign]
    assert asyncio.run(probe.read(1.0)) is None


def _answers(*pages: tuple[int, bytes]) -> Any:
    queue = list(pages)

    async def get(url: str, timeout: float) -> tuple[int, bytes]:
        if not queue:
            raise ProbeFailed(f"{url}: connection refused")
        return queue.pop(0)

    return get


def test_the_probe_detects_the_kind_once_and_then_expects_it() -> None:
    vllm_page = (FIXTURES / "vllm.txt").read_bytes()
    probe = MetricsProbe("http://127.0.0.1:1/v1")
    probe._get = _answers((200, vllm_page), (404, b"Not Found"))  # type: ignore[method-assign]
    first = asyncio.run(probe.read(1.0))
    assert first is not None and probe.kind == "vllm"
    with pytest.raises(ProbeFailed, match="HTTP 404"):  # a vLLM that stops answering
        asyncio.run(probe.read(1.0))
    # Not yet detected: no page (or one without metrics we know) means no signal source.
    for page in ((404, b""), (501, b'{"error": "not supported"}'), (200, b"up 1\n")):
        fresh = MetricsProbe("http://127.0.0.1:1/v1")
        fresh._get = _answers(page)  # type: ignore[method-assign]
        assert asyncio.run(fresh.read(1.0)) is None
    named = MetricsProbe("http://127.0.0.1:1/v1", kind="sglang")
    named._get = _answers((501, b""))  # type: ignore[method-assign]
    with pytest.raises(ProbeFailed):
        asyncio.run(named.read(1.0))


def test_the_probe_reads_llama_cpp_slots_until_they_are_turned_off() -> None:
    page = (FIXTURES / "llama_server.txt").read_bytes()
    slots = (FIXTURES / "llama_server_slots.json").read_bytes()
    probe = MetricsProbe("http://127.0.0.1:1/v1")
    probe._get = _answers((200, page), (200, slots), (200, page), (501, b""), (200, page))  # type: ignore[method-assign]
    load = asyncio.run(probe.read(1.0))
    assert load is not None and (load.slots, load.busy_slots, load.waiting) == (4, 2, 3)
    load = asyncio.run(probe.read(1.0))  # /slots answers 501: --no-slots
    assert load is not None and load.slots is None
    load = asyncio.run(probe.read(1.0))  # and is not asked again
    assert load is not None and load.running == 2


# ------------------------------------------- the fake against the fixtures ----


def _heads(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("# ")]


def _label_names(text: str, name: str) -> set[str]:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return set(re.findall(r'(\w+)="', line))
    return set()


@pytest.mark.parametrize(("kind", "fixture"), [("vllm", "vllm.txt"), ("sglang", "sglang.txt")])
def test_the_fake_engine_renders_the_engines_names_help_and_labels(kind: str, fixture: str) -> None:
    engine = paced_engine.Engine(kind, slots=4, token_ms=1, model="m")
    page = paced_engine.generate_latest(paced_engine._registry(engine)).decode()
    truth = (FIXTURES / fixture).read_text()
    for head in _heads(page):
        assert head in _heads(truth), head
    for line in page.splitlines():
        if not line.startswith("#"):
            name = line.split("{")[0]
            assert _label_names(page, name) == _label_names(truth, name), name


def test_the_fake_llama_server_renders_its_page_line_for_line() -> None:
    engine = paced_engine.Engine("llama_cpp", slots=4, token_ms=1, model="m")
    page = paced_engine.llama_cpp_metrics(engine)
    assert _heads(page) == _heads((FIXTURES / "llama_server.txt").read_text())
    # Values as a C++ stream prints a double: no trailing ".0".
    assert "llamacpp:requests_deferred 0\n" in page
    slots = json.loads((FIXTURES / "llama_server_slots.json").read_text())
    assert set(paced_engine.llama_cpp_slots(engine)[0]) <= set(slots[0])


# --------------------------------------------------------------- balancer ----


class _Adapter:
    def __init__(self, target: str) -> None:
        self.target = target


class _Probe:
    def __init__(self, answer: Load | Exception | None) -> None:
        self.answer = answer
        self.url = f"fake:{id(self)}"

    async def read(self, timeout: float) -> Load | None:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def close(self) -> None:
        pass


def _replica(name: str, load: Load | None = None, **kwargs: object) -> Replica:
    """A replica with an engine-reported `load`, read just now (or no source at all)."""
    replica = Replica(_Adapter(name), probe=_Probe(load) if load else None, **kwargs)  # type: ignore[arg-type]
    if load is not None:
        replica.signal.load, replica.signal.read_at = load, 1000.0
    return replica


def _vllm(waiting: float = 0, running: float = 0, kv: float = 0.0) -> Load:
    return Load("vllm", waiting=waiting, running=running, kv_usage=kv)


def _config(**overrides: object) -> RouterServiceConfig:
    return RouterServiceConfig.model_validate({"port": 0, **overrides})


def _picks(balancer: Balancer, replicas: list[Replica], n: int = 50) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(n):
        chosen = balancer.choose(replicas, now=1000.5)
        assert chosen is not None
        counts[chosen[0].target] = counts.get(chosen[0].target, 0) + 1
    return counts


def test_a_deep_queue_or_a_full_kv_cache_loses_to_an_idle_engine() -> None:
    balancer = Balancer(_config())
    idle, queued, cached = (
        _replica("idle", _vllm()),
        _replica("q", _vllm(8)),
        _replica("kv", _vllm(kv=0.95)),
    )
    assert _picks(balancer, [idle, queued, cached]) == {"idle": 50}
    roomy = _replica("roomy", _vllm(kv=0.2))
    assert balancer.choose([roomy, cached], now=1000.5) == (roomy, "load")


def test_a_stale_or_missing_signal_counts_as_saturated_never_idle() -> None:
    balancer = Balancer(_config())
    busy = _replica("busy", _vllm(waiting=6, running=4, kv=0.8))
    stale = _replica("stale", _vllm())  # idle, but read long ago
    stale.signal.read_at = 1000.5 - 10
    missing = _replica("missing", _vllm())
    missing.signal.load = None  # never read yet
    failed = _replica("failed", _vllm())
    failed.signal.read_at, failed.signal.error = 997.0, "timed out"  # failing for 3.5 s
    assert [estimate(r, 1000.5).saturated for r in (busy, stale, missing, failed)] == [
        False,
        True,
        True,
        True,
    ]
    assert _picks(balancer, [busy, stale, missing, failed]) == {"busy": 50}
    # One failed read while the last good one is recent: still trusted.
    once = _replica("once", _vllm())
    once.signal.error = "timed out"
    assert not estimate(once, 1000.5).saturated
    # Only saturated candidates: the least outstanding of them.
    stale.outstanding, missing.outstanding, failed.outstanding = 3, 1, 2
    assert balancer.choose([stale, missing, failed], now=1000.5) == (missing, "saturated")


def test_without_any_signal_source_the_least_outstanding_wins() -> None:
    balancer = Balancer(_config())
    a, b = _replica("a"), _replica("b")
    a.outstanding, b.outstanding = 3, 1
    assert a.signal.state(0) == "none"
    assert balancer.choose([a, b]) == (b, "load")


def test_requests_sent_since_the_last_reading_count_so_a_burst_spreads() -> None:
    balancer = Balancer(_config())
    replicas = [_replica(n, _vllm()) for n in "abc"]

    async def burst() -> dict[str, int]:
        counts: dict[str, int] = {}
        for _ in range(9):
            chosen = await balancer.acquire("m", replicas, [], (), timeout=1)
            assert chosen is not None
            counts[chosen.target] = counts.get(chosen.target, 0) + 1
        return counts

    assert asyncio.run(burst()) == {"a": 3, "b": 3, "c": 3}


def test_llama_cpp_requests_start_at_once_while_a_slot_is_free() -> None:
    replica = _replica("l", Load("llama_cpp", waiting=0, running=1, slots=2, busy_slots=1))
    replica.signal.outstanding_at_read = 1  # the one it reported running
    replica.signal.inflight = 2  # one sent since the reading: it takes the free slot
    assert (estimate(replica, 1000.5).queue, estimate(replica, 1000.5).running) == (0, 2)
    replica.signal.inflight = 4  # three since: one runs, two wait
    assert (estimate(replica, 1000.5).queue, estimate(replica, 1000.5).running) == (2, 2)


def test_past_max_concurrency_the_next_replica_then_a_bounded_wait_then_503() -> None:
    balancer = Balancer(_config(queue_timeout_s=0.3))
    a = _replica("a", max_concurrency=1)
    b = _replica("b", max_concurrency=1)

    async def scenario() -> None:
        first = await balancer.acquire("m", [a, b], [], (), timeout=5)
        second = await balancer.acquire("m", [a, b], [], (), timeout=5)
        assert {first, second} == {a, b}
        # Both full: a third waits, and gets the slot the first one frees.
        waiter = asyncio.create_task(balancer.acquire("m", [a, b], [], (), timeout=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        assert first is not None
        balancer.release(first)
        assert await asyncio.wait_for(waiter, 1) is first
        # Nobody frees one: a 503 with Retry-After once queue_timeout_s has passed.
        started = asyncio.get_running_loop().time()
        with pytest.raises(ApiError) as refused:
            await balancer.acquire("m", [a, b], [], (), timeout=5)
        assert 0.25 < asyncio.get_running_loop().time() - started < 2
        assert (refused.value.status, refused.value.type, refused.value.retry_after) == (
            503,
            "server_error",
            1,
        )

    asyncio.run(scenario())


def test_the_wait_never_outlasts_the_requests_deadline() -> None:
    balancer = Balancer(_config(queue_timeout_s=30))
    a = _replica("a", max_concurrency=1)
    a.outstanding = 1

    async def scenario() -> float:
        started = asyncio.get_running_loop().time()
        with pytest.raises(ApiError):
            await balancer.acquire("m", [a], [], (), timeout=0.2)
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) < 2


# --------------------------------------------------------------- affinity ----

SYSTEM = "You are a careful assistant for the ACME support desk. " * 40


def _chat(system: str, question: str) -> inference_pb2.ChatCompletionRequest:
    return inference_pb2.ChatCompletionRequest(
        model="m",
        messages=[
            inference_pb2.ChatMessage(role="system", text=system),
            inference_pb2.ChatMessage(role="user", text=question),
        ],
    )


def test_prompts_that_share_a_system_prompt_share_their_leading_blocks() -> None:
    one = prefix_blocks(_chat(SYSTEM, "Where is my parcel?"), 256, 64)
    two = prefix_blocks(_chat(SYSTEM, "How do I reset my password?"), 256, 64)
    other = prefix_blocks(_chat("Translate to French. " * 80, "Where is my parcel?"), 256, 64)
    shared = len(SYSTEM) // 256
    assert len(one) >= shared and one[:shared] == two[:shared]
    assert not set(one) & set(other)
    assert prefix_blocks(_chat("Be brief.", "hi"), 256, 64) == ()
    assert len(prefix_blocks(_chat(SYSTEM * 10, "hi"), 256, 8)) == 8


def test_affinity_keeps_a_shared_prefix_on_one_replica_while_load_is_even() -> None:
    balancer = Balancer(_config())
    replicas = [_replica(n, _vllm(waiting=1, running=2)) for n in "abc"]
    blocks = balancer.blocks(_chat(SYSTEM, "first"))
    first, reason = balancer.choose(replicas, blocks, now=1000.5) or (None, "")
    assert reason == "load"
    for question in ("second", "third", "fourth"):
        blocks = balancer.blocks(_chat(SYSTEM, question))
        assert balancer.choose(replicas, blocks, now=1000.5) == (first, "affinity")


def test_affinity_yields_when_load_is_too_uneven() -> None:
    balancer = Balancer(
        _config(affinity={"balance_abs_threshold": 4, "balance_rel_threshold": 1.5})
    )
    a, b = _replica("a", _vllm()), _replica("b", _vllm())
    blocks = balancer.blocks(_chat(SYSTEM, "first"))
    first, _ = balancer.choose([a, b], blocks, now=1000.5) or (a, "")
    other = b if first is a else a
    # The affinity replica gets busy: 6 waiting + 4 running against 0 is past both thresholds.
    assert first.signal.load is not None
    first.signal.load = _vllm(waiting=6, running=4)
    assert balancer.choose([a, b], blocks, now=1000.5) == (other, "yield")
    # Mildly busier (1 + 2 against 0: under the absolute threshold): affinity holds.
    balancer = Balancer(_config(affinity={"balance_abs_threshold": 4}))
    first.signal.load = _vllm()
    balancer.choose([first], blocks, now=1000.5)
    first.signal.load = _vllm(waiting=1, running=2)
    assert balancer.choose([a, b], blocks, now=1000.5) == (first, "affinity")


def test_affinity_off_is_plain_load_balancing() -> None:
    balancer = Balancer(_config(affinity={"enabled": False}))
    assert balancer.blocks(_chat(SYSTEM, "hi")) == ()


# ----------------------------------------------------------------- poller ----


def test_the_poller_marks_failures_stale_and_engines_without_signals_as_none() -> None:
    good = _replica("good", _vllm(waiting=2))
    good.signal = Signal()
    failing = Replica(_Adapter("failing"), probe=_Probe(ProbeFailed("timed out")))  # type: ignore[arg-type]
    silent = Replica(_Adapter("silent"), probe=_Probe(None))  # type: ignore[arg-type]
    poller = Poller([good, failing, silent])
    asyncio.run(poller.poll_once())
    now = good.signal.read_at + 0.1
    assert good.signal.state(now) == "fresh" and good.signal.load == _vllm(waiting=2)
    assert failing.signal.state(now) == "missing" and failing.signal.error == "timed out"
    good.probe = _Probe(ProbeFailed("HTTP 500"))  # then it fails: its reading ages out
    asyncio.run(poller.poll(good))
    assert good.signal.error == "HTTP 500" and good.signal.state(now) == "fresh"
    assert silent.signal.state(now) == "none"
    assert good.signal.state(now + 10) == "stale"


def test_requests_that_finished_since_the_reading_leave_its_queue_first() -> None:
    replica = _replica("v", _vllm(waiting=3, running=4, kv=0.8))
    replica.signal.outstanding_at_read = 7
    replica.signal.inflight = 5  # two finished: two waiting ones took their slots
    assert (estimate(replica, 1000.5).queue, estimate(replica, 1000.5).running) == (1, 4)
    replica.signal.inflight = 1  # six finished: the queue is empty, one runs
    now = estimate(replica, 1000.5)
    assert (now.queue, now.running) == (0, 1) and now.kv_usage == pytest.approx(0.2)


def test_a_slow_replicas_queue_weighs_more_than_a_quick_ones() -> None:
    balancer = Balancer(_config())
    quick, slow = (
        _replica("quick", _vllm(waiting=2, running=4, kv=0.5)),
        _replica("slow", _vllm(waiting=1, running=2, kv=0.5)),
    )
    assert balancer.choose([quick, slow], now=1000.5) == (slow, "load")
    # The router saw requests take 0.25 s on one and 1 s on the other (Little's law).
    for replica, seconds in ((quick, 0.25), (slow, 1.0)):
        for i in range(8):
            replica.residence.advance(replica.outstanding, 10.0 + i)
            replica.outstanding += 1
            replica.residence.advance(replica.outstanding, 10.0 + i + seconds)
            replica.outstanding -= 1
            replica.residence.finished(10.0 + i + seconds)
    assert quick.residence.seconds == pytest.approx(0.25)
    assert slow.residence.seconds == pytest.approx(1.0)
    assert balancer.choose([quick, slow], now=1000.5) == (quick, "load")
