"""A bounded soak: minutes of steady load through meshgate, with the mesh's memory sampled.

    .venv/bin/python bench/soak.py [--minutes 5] [--streams 500] [--rate 50] [--out FILE]

It starts its own mesh (`meshgate up`, production settings, free loopback
ports, the reference engine pacing its tokens), then for `--minutes`:

- keeps `--streams` streaming chat requests open at all times: each of that
  many slots opens a connection, sends one stream (`ignore_eos`, so the engine
  emits exactly `max_tokens` tokens, ~15 s), reads it to the end, checks it,
  and opens the next one;
- sends non-streaming chat requests at a fixed open-loop `--rate` per second
  (scheduled whatever the gateway does, on a keep-alive pool);
- samples every process of the `meshgate up` tree (launcher, edge, auth,
  quota, validation, router, engine, Redis) every `--sample-s`: VmRSS and Pss.

Then it lets the streams in flight finish, stops the mesh, prints a table and
writes JSON. Every request is checked (status, SSE framing, JSON, error
events, `[DONE]`, token count, time limit); the exit status is 1 if any failed,
if a mesh process was restarted or the mesh did not stop cleanly, or if a
process's memory shows a growth trend (see `growth_trend`). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `meshgate` importable
    sys.path.insert(0, str(ROOT))

from bench import report, streams  # noqa: E402
from bench.httpclient import HttpConnection, Response, build_request, split_base_url  # noqa: E402
from bench.payloads import Payload  # noqa: E402
from bench.procstat import HostCpu, cpu_seconds, host_busy_pct, memory_kib  # noqa: E402
from bench.run import _git_commit  # noqa: E402
from bench.stack import MeshProcess  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "soak.json"
# Decode pacing of the reference engine. A soak must run at a load the mesh can
# sustain: overloaded, its queues grow, which looks like a leak and ends in
# timeouts. Relaying one chunk costs ~0.3 ms of CPU across edge, router and
# engine, so on the 2-core reference machine 500 streams at 20-50 ms a token
# (10,000-25,000 chunks/s) would need 3-7 cores, and even 100 ms (5,000
# chunks/s) saturates both cores and stretches the streams. 200 ms (2,500
# chunks/s, plus 50 requests/s) takes ~1.1 cores, ~60 % of the machine with the
# client: the mesh keeps the engine's pace and other work still fits.
DEFAULT_TOKEN_DELAY_MS = 200.0
DEFAULT_STREAM_S = 15.0  # how long one stream lasts: max_tokens = this / token delay + 1
NONSTREAM_MAX_TOKENS = 16  # each non-streaming request also waits (16 - 1) token delays
WARMUP_S = 30.0
SAMPLE_S = 10.0
# A growth trend is flagged for a process when all three hold (see growth_trend):
# 1. its least-squares RSS slope over the samples after the warm-up exceeds
#    SLOPE_MB_PER_MIN. At ~80 requests/s (33 streams/s + 50/s), 1 MB/min is a
#    leak of ~200 bytes per request: one small object a request is already
#    visible, while CPython's allocator (arenas coming and going, a few hundred
#    KB at a time) moves a steady process's RSS far less than that over minutes;
# 2. its slope over the last half of those samples exceeds it too: a process
#    that fills caches or pools during the first minutes then stays flat is not
#    leaking, a leak grows at the end as well ("sustained");
# 3. its RSS at the end exceeds the start by more than GROWTH_PCT: for the large
#    processes (100+ MB) a 1 MB/min slope over 4.5 minutes is under 5 %, which
#    sampling noise alone can produce.
SLOPE_MB_PER_MIN = 1.0
GROWTH_PCT = 5.0
# A request that takes this much longer than its paced duration (or than
# NONSTREAM_TIMEOUT_S) counts as a timeout error.
STREAM_TIMEOUT_FACTOR = 3.0
STREAM_TIMEOUT_MIN_S = 60.0
NONSTREAM_TIMEOUT_S = 30.0
# An idle pooled connection older than this is closed rather than reused:
# uvicorn closes keep-alive connections after 5 s idle, and a request sent just
# as the server closes the connection would be a client-side race, not an error.
POOL_IDLE_S = 2.0
POOL_MAX_CONNECTIONS = 1024
# Stream slots open their first connection this many at a time (as streams.py does).
CONNECT_PARALLEL = 128
ERROR_SAMPLES = 8
MB = 1_000_000
PROCESS_ORDER = report.PROCESS_ORDER
DONE_EVENT = b"data: [DONE]\n\n"
# With ignore_eos the reference engine pads its answer sentence by sentence up
# to max_tokens; when a sentence ends exactly there it reports "stop", not
# "length" (vLLM would say "length"). The token count is checked exactly either way.
FINISH_REASONS = ("length", "stop")
MEMORY_BASIS = (
    "VmRSS (psutil's rss) and Pss (psutil's memory_full_info().pss) per process of the "
    "meshgate up tree; MB = 10^6 bytes; slopes are least-squares fits over the samples after "
    "the warm-up"
)


# ------------------------------------------------------------------ checks ----


def check_stream(body: bytes, expected_tokens: int) -> str | None:
    """None if `body` is a complete, well-formed chat stream of exactly `expected_tokens`."""
    if not body.endswith(DONE_EVENT):
        at = body.rfind(b'data: {"error"')
        if at >= 0:
            return f"mid-stream error event: {body[at : at + 200]!r}"
        return f"stream without [DONE]: ...{body[-120:]!r}"
    tokens = 0
    finish: str | None = None
    usage: dict[str, Any] | None = None
    for event in body[: -len(DONE_EVENT)].split(b"\n\n")[:-1]:
        if not event.startswith(b"data: "):
            return f"malformed SSE event: {event[:120]!r}"
        try:
            chunk = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return f"malformed SSE JSON: {event[:120]!r}"
        if not isinstance(chunk, dict):
            return f"malformed SSE JSON: {event[:120]!r}"
        if "error" in chunk:
            return f"mid-stream error event: {event[:200]!r}"
        for choice in chunk.get("choices") or ():
            if choice["delta"].get("content"):
                tokens += 1
            finish = choice.get("finish_reason") or finish
        if chunk.get("usage"):
            usage = chunk["usage"]
    if tokens != expected_tokens:
        return f"stream with {tokens} content chunks, expected {expected_tokens}"
    if finish not in FINISH_REASONS:
        return f"stream finish_reason {finish!r}"
    if usage is None or usage.get("completion_tokens") != expected_tokens:
        return f"stream usage {usage!r}, expected completion_tokens {expected_tokens}"
    return None


def check_completion(body: bytes, expected_tokens: int) -> str | None:
    """None if `body` is a chat completion of exactly `expected_tokens` tokens."""
    try:
        completion = orjson.loads(body)
        choice = completion["choices"][0]
        content = choice["message"]["content"]
        finish = choice["finish_reason"]
        used = completion["usage"]["completion_tokens"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return f"malformed completion: {body[:200]!r}"
    if not content or finish not in FINISH_REASONS or used != expected_tokens:
        return f"completion finish_reason {finish!r}, completion_tokens {used}"
    return None


# ---------------------------------------------------------------- analysis ----


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value per minute."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


def growth_trend(slope: float | None, slope_late: float | None, delta_pct: float | None) -> bool:
    """The three conditions of SLOPE_MB_PER_MIN / GROWTH_PCT (see there)."""
    if slope is None or slope_late is None or delta_pct is None:
        return False
    return slope > SLOPE_MB_PER_MIN and slope_late > SLOPE_MB_PER_MIN and delta_pct > GROWTH_PCT


def memory_summary(
    samples: list[dict[str, Any]], warmup_s: float, idle: dict[str, Any], after: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per process (and the total): start, end, delta, slopes, trend flag."""
    measured = [s for s in samples if s["t_s"] >= warmup_s - 0.5] or samples[-1:]
    labels = sorted(
        {label for s in samples for label in s["rss_kib"]},
        key=lambda p: (PROCESS_ORDER.index(p) if p in PROCESS_ORDER else len(PROCESS_ORDER), p),
    )
    rows: list[dict[str, Any]] = []
    for label in [*labels, "total"]:

        def value(sample: dict[str, Any], key: str, label: str = label) -> float | None:
            by = sample[key]
            kib = sum(by.values()) if label == "total" else by.get(label)
            return None if kib is None else kib * 1024 / MB

        points = [(s["t_s"], v) for s in measured if (v := value(s, "rss_kib")) is not None]
        if not points:
            continue
        late = [p for p in points if p[0] >= (points[0][0] + points[-1][0]) / 2]
        start, end = points[0][1], points[-1][1]
        slope, slope_late = slope_per_min(points), slope_per_min(late)
        delta_pct = (end - start) / start * 100 if start else None
        rows.append(
            {
                "process": label,
                "idle_mb": value(idle, "rss_kib"),
                "start_mb": start,
                "end_mb": end,
                "delta_mb": end - start,
                "delta_pct": delta_pct,
                "slope_mb_per_min": slope,
                "slope_late_mb_per_min": slope_late,
                "min_mb": min(v for _, v in points),
                "max_mb": max(v for _, v in points),
                "pss_start_mb": value(measured[0], "pss_kib"),
                "pss_end_mb": value(measured[-1], "pss_kib"),
                "after_mb": value(after, "rss_kib"),
                "growth_trend": growth_trend(slope, slope_late, delta_pct),
            }
        )
    return rows


def memory_table(rows: list[dict[str, Any]]) -> str:
    def mb(v: float | None, digits: int = 1) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    def signed(v: float | None, digits: int = 2, suffix: str = "") -> str:
        return "-" if v is None else f"{v:+,.{digits}f}{suffix}"

    headers = [
        "process",
        "idle MB",
        "start MB",
        "end MB",
        "delta MB",
        "delta %",
        "slope MB/min",
        "late slope",
        "Pss start",
        "Pss end",
        "after MB",
        "trend",
    ]
    body = [
        [
            r["process"],
            mb(r["idle_mb"]),
            mb(r["start_mb"]),
            mb(r["end_mb"]),
            signed(r["delta_mb"], 1),
            signed(r["delta_pct"], 1, "%"),
            signed(r["slope_mb_per_min"], 3),
            signed(r["slope_late_mb_per_min"], 3),
            mb(r["pss_start_mb"]),
            mb(r["pss_end_mb"]),
            mb(r["after_mb"]),
            "GROWTH" if r["growth_trend"] else "flat",
        ]
        for r in rows
    ]
    return report.table(headers, body)


# -------------------------------------------------------------------- load ----


@dataclass
class Tally:
    """What the load did; errors keep a few distinct messages as samples."""

    streams_started: int = 0
    streams_ok: int = 0
    requests_scheduled: int = 0
    requests_ok: int = 0
    errors: int = 0
    error_samples: dict[str, int] = field(default_factory=dict)
    open_streams: int = 0
    stream_ttft: list[float] = field(default_factory=list)
    stream_total: list[float] = field(default_factory=list)
    request_latency: list[float] = field(default_factory=list)
    send_lag: list[float] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        kind = message[:160]
        known = len(self.error_samples) < ERROR_SAMPLES or kind in self.error_samples
        slot = kind if known else "(other errors)"
        self.error_samples[slot] = self.error_samples.get(slot, 0) + 1


@dataclass(frozen=True)
class Plan:
    """The shape of the load; see parse_args."""

    duration_s: float
    streams: int
    rate: float
    token_delay_ms: float
    stream_tokens: int
    warmup_s: float
    sample_s: float

    @property
    def stream_s(self) -> float:
        return (self.stream_tokens - 1) * self.token_delay_ms / 1000.0

    @property
    def stream_timeout_s(self) -> float:
        return max(STREAM_TIMEOUT_MIN_S, self.stream_s * STREAM_TIMEOUT_FACTOR)


class Soak:
    """The load generator and the sampler, on one event loop."""

    def __init__(self, mesh: MeshProcess, plan: Plan) -> None:
        self.mesh = mesh
        self.plan = plan
        self.host, self.port, _ = split_base_url(mesh.base_url)
        self.payload = Payload()
        self.tally = Tally()
        self.serial = itertools.count()
        self.samples: list[dict[str, Any]] = []
        self.pids = mesh.processes()
        self.restarts: list[str] = []
        self.pool: list[tuple[float, HttpConnection]] = []
        self.pool_size = 0
        self.stopping = False
        self.started = 0.0

    def body(self, stream: bool, max_tokens: int) -> bytes:
        """A chat request; every one differs (message and seed), as real traffic does.

        Identical requests would hide a cache keyed by content that grows without bound.
        """
        n = next(self.serial)
        body: dict[str, Any] = {
            "model": self.payload.chat_model,
            "messages": [{"role": "user", "content": f"{self.payload.message} (#{n})"}],
            "max_tokens": max_tokens,
            "seed": n,
            "ignore_eos": True,  # vLLM's extra field: exactly max_tokens tokens
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return build_request(
            self.mesh.base_url, "/chat/completions", self.mesh.key, orjson.dumps(body)
        )

    # -- streams --------------------------------------------------------------

    async def stream_slot(self, index: int, gate: asyncio.Semaphore) -> None:
        """One of the `streams` slots: a stream, then the next, until the end of the soak.

        The first stream of slot i is cut to (i + 1) / streams of the full length,
        so that the slots end (and reopen) spread evenly instead of in waves.
        """
        plan = self.plan
        tokens = max(2, round(plan.stream_tokens * (index + 1) / plan.streams))
        ok = await self.one_stream(tokens, gate)
        while not self.stopping:
            if not ok:
                await asyncio.sleep(0.5)  # a failing mesh is not hammered in a tight loop
            ok = await self.one_stream(plan.stream_tokens)

    async def one_stream(self, tokens: int, gate: asyncio.Semaphore | None = None) -> bool:
        """One stream on a new connection, read to the end and checked; False if it failed."""
        tally = self.tally
        raw = self.body(True, tokens)
        tally.streams_started += 1
        tally.open_streams += 1
        sent = time.monotonic()
        conn: HttpConnection | None = None
        try:
            # A fresh connection per stream: the edge's connection handling is soaked too.
            async with gate or contextlib.nullcontext():
                conn = await HttpConnection.open(self.host, self.port, keep_body=True)
            sent = time.monotonic()
            response = await conn.request(raw, True, self.plan.stream_timeout_s)
        except (OSError, TimeoutError) as exc:
            tally.error(f"stream: {type(exc).__name__}: {exc}")
            return False
        finally:
            tally.open_streams -= 1
            if conn is not None:
                conn.close()
        problem = self.http_problem(response) or check_stream(response.body, tokens)
        if problem:
            tally.error(problem)
            return False
        tally.streams_ok += 1
        tally.stream_ttft.append(response.first_token_at - sent)
        tally.stream_total.append(response.done_at - sent)
        return True

    @staticmethod
    def http_problem(response: Response) -> str | None:
        if response.status == 200:
            return None
        return f"HTTP {response.status}: {response.body[:200].decode(errors='replace')}"

    # -- open-loop requests ---------------------------------------------------

    async def open_loop(self, until: float) -> None:
        """Schedule one request every 1/rate s from `self.started`, whatever the gateway does."""
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / self.plan.rate
        for k in itertools.count():
            due = self.started + k * interval
            if due >= until:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self.one_request(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def one_request(self, due: float) -> None:
        tally = self.tally
        tally.requests_scheduled += 1
        tally.send_lag.append(time.monotonic() - due)
        raw = self.body(False, NONSTREAM_MAX_TOKENS)
        timeout = NONSTREAM_TIMEOUT_S + (NONSTREAM_MAX_TOKENS - 1) * self.plan.token_delay_ms / 1e3
        try:
            conn = await self.take()
        except OSError as exc:
            tally.error(f"request: connect: {type(exc).__name__}: {exc}")
            return
        try:
            response = await conn.request(raw, False, timeout)
        except (OSError, TimeoutError) as exc:
            conn.close()
            self.pool_size -= 1
            tally.error(f"request: {type(exc).__name__}: {exc}")
            return
        self.give(conn)
        problem = self.http_problem(response) or check_completion(
            response.body, NONSTREAM_MAX_TOKENS
        )
        if problem:
            tally.error(problem)
            return
        tally.requests_ok += 1
        tally.request_latency.append(response.done_at - due)

    async def take(self) -> HttpConnection:
        """An idle keep-alive connection (used within POOL_IDLE_S), else a new one."""
        now = time.monotonic()
        while self.pool:
            used_at, conn = self.pool.pop()
            if not conn.closed and now - used_at < POOL_IDLE_S:
                return conn
            conn.close()
            self.pool_size -= 1
        while self.pool_size >= POOL_MAX_CONNECTIONS:  # the gateway stalls: wait, it counts
            await asyncio.sleep(0.01)
            if self.pool:
                return await self.take()
        self.pool_size += 1
        try:
            return await HttpConnection.open(self.host, self.port, keep_body=True)
        except OSError:
            self.pool_size -= 1
            raise

    def give(self, conn: HttpConnection) -> None:
        if conn.closed:
            self.pool_size -= 1
        else:
            self.pool.append((time.monotonic(), conn))

    # -- sampling -------------------------------------------------------------

    def sample(self, t_s: float) -> dict[str, Any]:
        """VmRSS/Pss (KiB) and CPU seconds per process; a changed pid is a restart."""
        current = self.mesh.processes()
        for pid, label in current.items():
            if pid not in self.pids:
                self.restarts.append(f"{label}: new pid {pid} at t={t_s:.0f}s")
        self.pids = current
        rss: dict[str, int] = {}
        pss: dict[str, int] = {}
        cpu: dict[str, float] = {}
        for pid, label in current.items():
            memory = memory_kib(pid)
            seconds = cpu_seconds(pid)
            if memory is not None:
                rss[label] = rss.get(label, 0) + memory[0]
                pss[label] = pss.get(label, 0) + memory[1]
            if seconds is not None:
                cpu[label] = cpu.get(label, 0.0) + seconds
        own = memory_kib(os.getpid())
        own_cpu = cpu_seconds(os.getpid())
        tally = self.tally
        return {
            "t_s": round(t_s, 1),
            "rss_kib": rss,
            "pss_kib": pss,
            "cpu_s": cpu,
            "host": HostCpu.read(),
            "client_rss_kib": own[0] if own else None,
            "client_cpu_s": own_cpu,
            "open_streams": tally.open_streams,
            "streams_ok": tally.streams_ok,
            "requests_ok": tally.requests_ok,
            "errors": tally.errors,
        }

    async def sampler(self, until: float) -> None:
        """A sample every `sample_s` from the start of the load, the last one at `until`."""
        plan = self.plan
        for k in itertools.count(1):
            due = min(self.started + k * plan.sample_s, until)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            sample = self.sample(time.monotonic() - self.started)
            self.add_rates(sample)
            self.samples.append(sample)
            progress(sample)
            if due >= until:
                return

    def add_rates(self, sample: dict[str, Any]) -> None:
        """Mesh CPU (% of one core) and host busy % since the previous sample."""
        before = self.samples[-1] if self.samples else None
        if before is None:
            return
        wall = sample["t_s"] - before["t_s"]
        if wall <= 0:
            return
        mesh_s = sum(sample["cpu_s"].values()) - sum(before["cpu_s"].values())
        client_s = (sample["client_cpu_s"] or 0.0) - (before["client_cpu_s"] or 0.0)
        host = sample["host"]
        busy = host.busy_fraction_since(before["host"])
        irq = host.irq_fraction_since(before["host"])
        cpus = os.cpu_count() or 1
        sample["mesh_cpu_core_pct"] = round(mesh_s / wall * 100, 1)
        sample["client_cpu_core_pct"] = round(client_s / wall * 100, 1)
        sample["host_busy_pct"] = round(busy * 100, 1)
        # Busy CPU that is neither the mesh, this client nor interrupts: somebody else's load.
        other = (busy - irq) * cpus * wall - mesh_s - client_s
        sample["other_core_pct"] = round(max(0.0, other) / wall * 100, 1)

    # -- the whole soak -------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        idle = self.sample(0.0)  # the mesh before any load: the first sample too
        self.started = time.monotonic()
        until = self.started + plan.duration_s
        self.samples.append(idle)
        gate = asyncio.Semaphore(CONNECT_PARALLEL)
        slots = [asyncio.ensure_future(self.stream_slot(i, gate)) for i in range(plan.streams)]
        sampler = asyncio.ensure_future(self.sampler(until))
        requests = asyncio.ensure_future(self.open_loop(until))
        await sampler  # the last sample is taken at `until`, with the load still on
        self.stopping = True
        drain_started = time.monotonic()
        print(
            f"  load stopped; draining {self.tally.open_streams} streams in flight ...", flush=True
        )
        await asyncio.gather(requests, *slots)
        drain_s = time.monotonic() - drain_started
        for _, conn in self.pool:
            conn.close()
        await asyncio.sleep(1.0)  # the mesh notices the closed connections
        after = self.sample(time.monotonic() - self.started)
        return {"idle": idle, "after": after, "drain_s": round(drain_s, 1)}


def progress(sample: dict[str, Any]) -> None:
    rss = sum(sample["rss_kib"].values()) * 1024 / MB
    cpu = sample.get("mesh_cpu_core_pct")
    busy = sample.get("host_busy_pct")
    other = sample.get("other_core_pct")
    print(
        f"  t={sample['t_s']:6.1f}s  open streams {sample['open_streams']:4d}  "
        f"streams ok {sample['streams_ok']:6d}  requests ok {sample['requests_ok']:6d}  "
        f"errors {sample['errors']}  mesh RSS {rss:6.1f} MB  "
        f"mesh cpu {'-' if cpu is None else f'{cpu:.0f}'}% of a core  "
        f"host {'-' if busy is None else f'{busy:.0f}'}% busy  "
        f"other {'-' if other is None else f'{other:.0f}'}% of a core",
        flush=True,
    )


def _plain(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample as JSON: the HostCpu snapshot is only needed for the rates."""
    return {k: v for k, v in sample.items() if k != "host"}


def soak(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Start a mesh, run the soak against it, stop it; the result as a dict."""
    mesh = MeshProcess(workdir, plan.token_delay_ms, name="meshgate-soak")
    runner = Soak(mesh, plan)
    try:
        print(f"meshgate is up at {mesh.base_url} (launcher pid {mesh.pid})", flush=True)
        ends = _run_loop(runner.run)
    finally:
        exit_code = mesh.stop()
    tally = runner.tally
    rows = memory_summary(runner.samples, plan.warmup_s, ends["idle"], ends["after"])
    load = [s for s in runner.samples if "mesh_cpu_core_pct" in s]
    return {
        "requests": {
            "streams_started": tally.streams_started,
            "streams_ok": tally.streams_ok,
            "nonstream_scheduled": tally.requests_scheduled,
            "nonstream_ok": tally.requests_ok,
            "errors": tally.errors,
            "error_samples": tally.error_samples,
            "open_streams_min": min((s["open_streams"] for s in runner.samples[1:]), default=0),
            "stream_ttft_us": report.distribution_us(tally.stream_ttft),
            "stream_total_us": report.distribution_us(tally.stream_total),
            "nonstream_latency_us": report.distribution_us(tally.request_latency),
            "nonstream_send_lag_us": report.distribution_us(tally.send_lag),
            "drain_s": ends["drain_s"],
        },
        "cpu": {
            "mesh_core_pct_mean": _mean([s["mesh_cpu_core_pct"] for s in load]),
            "client_core_pct_mean": _mean([s["client_cpu_core_pct"] for s in load]),
            "other_core_pct_mean": _mean([s["other_core_pct"] for s in load]),
            "host_busy_pct_mean": _mean([s["host_busy_pct"] for s in load]),
            "host_busy_pct_max": max((s["host_busy_pct"] for s in load), default=None),
        },
        "memory": rows,
        "memory_basis": MEMORY_BASIS,
        "samples": [_plain(s) for s in runner.samples],
        "idle_sample": _plain(ends["idle"]),
        "after_sample": _plain(ends["after"]),
        "restarts": runner.restarts,
        "meshgate_exit_code": exit_code,
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _run_loop(main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


# --------------------------------------------------------------------- cli ----


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=5.0, help="load duration (default 5)")
    parser.add_argument("--streams", type=int, default=500, help="streams kept open (500)")
    parser.add_argument("--rate", type=float, default=50.0, help="non-streaming requests/s (50)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result path")
    parser.add_argument(
        "--token-delay-ms",
        type=float,
        default=DEFAULT_TOKEN_DELAY_MS,
        help=f"the engine's delay between tokens (default {DEFAULT_TOKEN_DELAY_MS:g})",
    )
    parser.add_argument(
        "--stream-s",
        type=float,
        default=DEFAULT_STREAM_S,
        help=f"how long one stream lasts; sets its max_tokens (default {DEFAULT_STREAM_S:g})",
    )
    parser.add_argument(
        "--warmup-s", type=float, default=WARMUP_S, help="memory start point (default 30)"
    )
    parser.add_argument(
        "--sample-s", type=float, default=SAMPLE_S, help="memory sampling period (default 10)"
    )
    args = parser.parse_args(argv)
    if args.streams < 1 or args.rate <= 0 or args.token_delay_ms <= 0 or args.minutes <= 0:
        parser.error("--streams, --rate, --token-delay-ms and --minutes must be positive")
    if args.warmup_s >= args.minutes * 60:
        parser.error("the warm-up must be shorter than the soak")
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the finally that stops the mesh


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    plan = Plan(
        duration_s=args.minutes * 60.0,
        streams=args.streams,
        rate=args.rate,
        token_delay_ms=args.token_delay_ms,
        stream_tokens=max(2, round(args.stream_s * 1000.0 / args.token_delay_ms) + 1),
        warmup_s=args.warmup_s,
        sample_s=args.sample_s,
    )
    concurrent_requests = args.rate * (NONSTREAM_TIMEOUT_S + 15 * args.token_delay_ms / 1e3)
    fd_limit = streams.raise_fd_limit(args.streams + int(concurrent_requests) + 1024)
    print(
        f"soak: {args.minutes:g} min, {args.streams} open streams ({plan.stream_tokens} tokens, "
        f"~{plan.stream_s:.0f} s each, token_delay_ms {args.token_delay_ms:g}) + "
        f"{args.rate:g} non-streaming requests/s; memory every {args.sample_s:g} s, "
        f"start after {args.warmup_s:g} s",
        flush=True,
    )
    started = time.monotonic()
    meta: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "minutes": args.minutes,
        "streams": args.streams,
        "rate": args.rate,
        "token_delay_ms": args.token_delay_ms,
        "stream_max_tokens": plan.stream_tokens,
        "stream_s": plan.stream_s,
        "nonstream_max_tokens": NONSTREAM_MAX_TOKENS,
        "warmup_s": args.warmup_s,
        "sample_s": args.sample_s,
        "fd_limit": fd_limit,
        "thresholds": {"slope_mb_per_min": SLOPE_MB_PER_MIN, "growth_pct": GROWTH_PCT},
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg(),
        },
    }
    # What the machine does without us: on a shared box this is not zero.
    meta["host"]["baseline_busy_pct"] = host_busy_pct(1.0)
    with tempfile.TemporaryDirectory(prefix="meshgate-soak-") as tmp:
        result = {"meta": meta, **soak(plan, Path(tmp))}
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    meta["host"]["loadavg_at_end"] = os.getloadavg()
    failures = verdict(result)
    result["failures"] = failures
    print()
    print(render(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(f"\nwrote {args.out} ({meta['elapsed_s']} s)")
    return 1 if failures else 0


def verdict(result: dict[str, Any]) -> list[str]:
    """Why the soak failed; empty if it passed."""
    failures: list[str] = []
    requests = result["requests"]
    if requests["errors"]:
        failures.append(f"{requests['errors']} request(s) failed")
    if result["restarts"]:
        failures.append(f"mesh processes restarted: {', '.join(result['restarts'])}")
    if result["meshgate_exit_code"] != 0:
        failures.append(f"meshgate up exited with {result['meshgate_exit_code']}")
    grown = [r["process"] for r in result["memory"] if r["growth_trend"]]
    if grown:
        failures.append(f"memory growth trend: {', '.join(grown)}")
    return failures


def render(result: dict[str, Any]) -> str:
    meta, requests, cpu = result["meta"], result["requests"], result["cpu"]

    def ms(dist: dict[str, float] | None, key: str) -> str:
        return "-" if not dist else f"{dist[key] / 1000:,.1f}"

    lines = [
        f"Soak: {meta['minutes']:g} min through meshgate, {meta['streams']} open streams "
        f"({meta['stream_max_tokens']} tokens at {meta['token_delay_ms']:g} ms) + "
        f"{meta['rate']:g} non-streaming req/s; commit {meta['git_commit'] or '?'}",
        f"streams: {requests['streams_ok']:,} completed of {requests['streams_started']:,} "
        f"started, at least {requests['open_streams_min']} open at every sample; "
        f"ttft p50/p99 {ms(requests['stream_ttft_us'], 'p50')}/"
        f"{ms(requests['stream_ttft_us'], 'p99')} ms, duration p50/p99 "
        f"{ms(requests['stream_total_us'], 'p50')}/{ms(requests['stream_total_us'], 'p99')} ms",
        f"non-streaming: {requests['nonstream_ok']:,} completed of "
        f"{requests['nonstream_scheduled']:,} scheduled; latency from the scheduled time "
        f"p50/p99/max {ms(requests['nonstream_latency_us'], 'p50')}/"
        f"{ms(requests['nonstream_latency_us'], 'p99')}/"
        f"{ms(requests['nonstream_latency_us'], 'max')} ms",
        f"errors: {requests['errors']}"
        + "".join(f"\n  {count} x {msg}" for msg, count in requests["error_samples"].items()),
        f"CPU, % of one core on average: mesh {cpu['mesh_core_pct_mean']}, this client "
        f"{cpu['client_core_pct_mean']}, other processes {cpu['other_core_pct_mean']}; host "
        f"{cpu['host_busy_pct_mean']}% busy on average (max {cpu['host_busy_pct_max']}%) of "
        f"{meta['host']['cpus']} CPUs (before the soak: {meta['host']['baseline_busy_pct']}%)",
        f"restarts: {len(result['restarts'])}; meshgate up exit code "
        f"{result['meshgate_exit_code']}",
        "",
        f"Memory (VmRSS; start = first sample at >= {meta['warmup_s']:g} s, end = last sample "
        f"under load; slope = least squares over the samples from start to end, late slope = "
        f"over their second half; idle = before the load, after = once it drained)",
        memory_table(result["memory"]),
        f"growth trend = slope and late slope > {SLOPE_MB_PER_MIN:g} MB/min and end > start + "
        f"{GROWTH_PCT:g}%",
        "",
        "PASS" if not result["failures"] else "FAIL: " + "; ".join(result["failures"]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    print("soak: interrupted; the mesh is stopped, no result written", file=sys.stderr)
    sys.exit(130)
