"""The load generator process: runs one scenario at a time, as told on stdin.

It runs apart from the orchestrator (bench/run.py) so that its CPU can be
measured on its own and so that nothing else shares its event loop: every
microsecond spent here is one the gateway under test does not get on a 2-core
machine. Hence uvloop, the raw HTTP client of httpclient.py, one long-lived
grpc.aio channel per target, pre-built requests, no per-request logging and
the garbage collector paused while a scenario runs.

Protocol, one JSON object per line:
  -> {"op": "prepare", "spec": {...}}    open connections for the scenario
  <- {"ok": true}
  -> {"op": "start", "start_at": T}      T is a time.monotonic() value: the clock
                                         is system-wide, so every generator
                                         process starts together
  <- {"ok": true, "result": {...}}       raw samples, in seconds
  -> {"op": "quit"}

Run it as `python -m bench.loadgen` with the repository root on sys.path.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # `python bench/loadgen.py`: make `bench` and `meshgate` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.httpclient import HttpConnection, build_request, split_base_url
from bench.payloads import PATHS, Endpoint, Payload

REQUEST_TIMEOUT_S = 30.0
# Open loop: connections opened up front, and the most it may ever hold.
OPEN_LOOP_INITIAL_CONNECTIONS = 32
OPEN_LOOP_MAX_CONNECTIONS = 1024
ERROR_SAMPLES = 5

_monotonic = time.monotonic

# error message (None when the request succeeded), completion time, first and last token times, tokens
Outcome = tuple[str | None, float, float, float, int]
Caller = Callable[[], Awaitable[Outcome]]


@dataclass(frozen=True)
class Spec:
    """One generator process's share of a scenario."""

    leg_kind: str  # "grpc" (EngineService) or "http" (OpenAI-compatible)
    target: str  # host:port for grpc, a base URL ending in /v1 for http
    key: str
    endpoint: Endpoint
    mode: str  # "closed" or "open"
    concurrency: int
    rate: float
    phase_s: float  # open loop: offset of this process's first send
    warmup_s: float
    duration_s: float
    max_requests: int
    drain_s: float
    payload: dict[str, Any]
    # Extra request headers a gateway needs (Portkey routes by them).
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Spec:
        return cls(**raw)


class Recorder:
    """Samples of the measurement window [begin, end); warm-up results are dropped.

    Closed loop counts a request by its completion time; open loop by its
    scheduled send time, so that a request stuck behind a slow gateway still
    counts (with its full latency from the schedule) instead of vanishing.
    """

    def __init__(self, begin: float, end: float, max_requests: int) -> None:
        self.begin = begin
        self.end = end
        self.max_requests = max_requests
        self.latency: list[float] = []
        self.ttft: list[float] = []
        # Start to the last content token: what tools such as aiperf call request latency.
        self.to_last: list[float] = []
        self.gap: list[float] = []
        self.tokens: list[int] = []
        self.lag: list[float] = []
        self.done_in_window = 0
        self.errors = 0
        self.error_samples: dict[str, int] = {}

    def ok(self, key_time: float, start: float, outcome: Outcome) -> None:
        _, done, first, last, tokens = outcome
        if not self.begin <= key_time < self.end:
            return
        self.latency.append(done - start)
        if tokens:
            self.ttft.append(first - start)
            self.to_last.append(last - start)
            self.tokens.append(tokens)
            if tokens > 1:
                self.gap.append((last - first) / (tokens - 1))
        if len(self.latency) >= self.max_requests:
            self.end = key_time  # request budget spent: the window closes here

    def error(self, key_time: float, message: str) -> None:
        if not self.begin <= key_time < self.end:
            return
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES or message in self.error_samples:
            self.error_samples[message] = self.error_samples.get(message, 0) + 1

    def result(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "window_s": max(self.end - self.begin, 1e-9),
            "latency": self.latency,
            "ttft": self.ttft,
            "to_last": self.to_last,
            "gap": self.gap,
            "tokens": self.tokens,
            "lag": self.lag,
            "done_in_window": self.done_in_window,
            "errors": self.errors,
            "error_samples": self.error_samples,
            **extra,
        }


# ----------------------------------------------------------------- callers ----


class HttpCaller:
    """One OpenAI-compatible request over one keep-alive connection (reopened on failure)."""

    def __init__(self, spec: Spec) -> None:
        payload = Payload.from_dict(spec.payload)
        self.host, self.port, _ = split_base_url(spec.target)
        self.raw = build_request(
            spec.target,
            PATHS[spec.endpoint],
            spec.key,
            payload.json_body(spec.endpoint),
            spec.headers,
        )
        self.stream = spec.endpoint == "chat_stream"
        self.conn: HttpConnection | None = None

    async def connect(self) -> None:
        self.conn = await HttpConnection.open(self.host, self.port)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    async def __call__(self) -> Outcome:
        try:
            if self.conn is None or self.conn.closed:
                await self.connect()
            assert self.conn is not None
            response = await self.conn.request(self.raw, self.stream, REQUEST_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self.close()
            self.conn = None
            return f"{type(exc).__name__}: {exc}", _monotonic(), 0.0, 0.0, 0
        if response.status != 200:
            detail = response.body[:200].decode(errors="replace")
            return f"HTTP {response.status}: {detail}", response.done_at, 0.0, 0.0, 0
        if self.stream and not response.tokens:
            return "stream without content tokens", response.done_at, 0.0, 0.0, 0
        first, last = response.first_token_at, response.last_token_at
        return None, response.done_at, first, last, response.tokens


class HttpPool:
    """Open loop over HTTP/1.1: a request takes an idle connection or opens one.

    Waiting for a connection is part of the measured latency, as it would be for
    a real client whose requests arrive on their own schedule.
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.idle: list[HttpCaller] = []
        self.total = 0
        self.waiters: list[asyncio.Future[HttpCaller]] = []

    async def fill(self, count: int) -> None:
        for _ in range(count):
            caller = HttpCaller(self.spec)
            await caller.connect()
            self.idle.append(caller)
            self.total += 1

    async def __call__(self) -> Outcome:
        if self.idle:
            caller = self.idle.pop()
        elif self.total < OPEN_LOOP_MAX_CONNECTIONS:
            self.total += 1
            caller = HttpCaller(self.spec)
        else:
            waiter: asyncio.Future[HttpCaller] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            caller = await waiter
        try:
            return await caller()
        finally:
            self._release(caller)

    def _release(self, caller: HttpCaller) -> None:
        """Hand the connection to the oldest request still waiting, else make it idle."""
        while self.waiters:
            waiter = self.waiters.pop(0)
            if not waiter.done():  # a waiter cancelled at the drain deadline is skipped
                waiter.set_result(caller)
                return
        self.idle.append(caller)

    def close(self) -> None:
        for caller in self.idle:
            caller.close()


_channels: dict[str, Any] = {}


def grpc_caller(spec: Spec) -> Caller:
    """EngineService over one long-lived grpc.aio channel per target, shared by all slots."""
    import grpc

    from meshgate.v1 import engine_pb2_grpc

    channel = _channels.get(spec.target)
    if channel is None:
        channel = grpc.aio.insecure_channel(
            spec.target,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        _channels[spec.target] = channel
    stub = engine_pb2_grpc.EngineServiceStub(channel)
    request = Payload.from_dict(spec.payload).engine_request(spec.endpoint)
    eof = grpc.aio.EOF
    rpc_error = grpc.aio.AioRpcError

    if spec.endpoint == "chat_stream":
        stream_chat = stub.StreamChat

        async def stream() -> Outcome:
            call = stream_chat(request, timeout=REQUEST_TIMEOUT_S)
            first = last = 0.0
            tokens = 0
            try:
                while True:
                    chunk = await call.read()
                    if chunk is eof:
                        break
                    choices = chunk.choices
                    if choices and choices[0].delta.content:
                        last = _monotonic()
                        if not tokens:
                            first = last
                        tokens += 1
            except rpc_error as exc:
                return f"gRPC {exc.code().name}: {exc.details()}", _monotonic(), 0.0, 0.0, 0
            done = _monotonic()
            if not tokens:
                return "stream without content tokens", done, 0.0, 0.0, 0
            return None, done, first, last, tokens

        return stream

    method = stub.Embed if spec.endpoint == "embeddings" else stub.GenerateChat

    async def unary() -> Outcome:
        try:
            await method(request, timeout=REQUEST_TIMEOUT_S)
        except rpc_error as exc:
            return f"gRPC {exc.code().name}: {exc.details()}", _monotonic(), 0.0, 0.0, 0
        return None, _monotonic(), 0.0, 0.0, 0

    return unary


# --------------------------------------------------------------- scenarios ----


class Scenario:
    """A prepared scenario: connections are open before the start signal."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.callers: list[Caller] = []
        self.http: list[HttpCaller] = []
        self.pool: HttpPool | None = None

    async def prepare(self) -> None:
        spec = self.spec
        if spec.mode == "open":
            if spec.leg_kind == "http":
                self.pool = HttpPool(spec)
                await self.pool.fill(OPEN_LOOP_INITIAL_CONNECTIONS)
                self.callers = [self.pool]
            else:
                self.callers = [grpc_caller(spec)]
        elif spec.leg_kind == "http":
            self.http = [HttpCaller(spec) for _ in range(spec.concurrency)]
            await asyncio.gather(*(caller.connect() for caller in self.http))
            self.callers = list(self.http)
        else:
            self.callers = [grpc_caller(spec)] * spec.concurrency
        # One request checks the path (and warms it) before the clock starts.
        for caller in self.callers[:1]:
            error = (await caller())[0]
            if error is not None:
                raise RuntimeError(f"first request failed: {error}")

    async def run(self, start_at: float) -> dict[str, Any]:
        spec = self.spec
        begin = start_at + spec.warmup_s
        recorder = Recorder(begin, begin + spec.duration_s, spec.max_requests)
        await asyncio.sleep(max(0.0, start_at - _monotonic()))
        if spec.mode == "open":
            extra = await self._open(recorder, start_at)
        else:
            extra = await self._closed(recorder)
        return recorder.result(extra)

    async def _closed(self, rec: Recorder) -> dict[str, Any]:
        async def slot(caller: Caller) -> None:
            while True:
                start = _monotonic()
                if start >= rec.end:
                    return
                outcome = await caller()
                done = outcome[1]
                if outcome[0] is None:
                    rec.ok(done, start, outcome)
                    if rec.begin <= done < rec.end:
                        rec.done_in_window += 1
                else:
                    rec.error(done, outcome[0])
                    await asyncio.sleep(0.01)  # a failing target must not become a busy loop

        tasks = [asyncio.ensure_future(slot(caller)) for caller in self.callers]
        # Requests still in flight at the end of the window are not counted; give them
        # a bounded time to finish so the next scenario starts on a quiet gateway.
        deadline = rec.end + self.spec.drain_s
        while tasks and _monotonic() < deadline:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - _monotonic()))
            tasks = list(pending)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"unfinished": len(tasks)}

    async def _open(self, rec: Recorder, start_at: float) -> dict[str, Any]:
        spec = self.spec
        caller = self.callers[0]
        interval = 1.0 / spec.rate
        total = int((spec.warmup_s + spec.duration_s) * spec.rate)
        first = start_at + spec.phase_s
        tasks: set[asyncio.Task[None]] = set()
        timeouts = 0

        async def one(scheduled: float) -> None:
            sent = _monotonic()
            if rec.begin <= scheduled < rec.end:
                rec.lag.append(sent - scheduled)
            outcome = await caller()
            done = outcome[1]
            if outcome[0] is None:
                rec.ok(scheduled, scheduled, outcome)
                if rec.begin <= done < rec.end:
                    rec.done_in_window += 1
            else:
                rec.error(scheduled, outcome[0])

        for i in range(total):
            scheduled = first + i * interval
            delay = scheduled - _monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=spec.drain_s)
            for task in pending:
                task.cancel()
                timeouts += 1
            await asyncio.gather(*pending, return_exceptions=True)
        if timeouts:
            rec.errors += timeouts
            rec.error_samples["no answer before the drain deadline"] = timeouts
        connections = self.pool.total if self.pool is not None else 0
        return {"sent": total, "connections": connections}

    def close(self) -> None:
        for caller in self.http:
            caller.close()
        if self.pool is not None:
            self.pool.close()


# -------------------------------------------------------------------- main ----


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


def main() -> int:
    """Serve commands from stdin until "quit" or EOF (the orchestrator went away)."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    gc.freeze()  # everything imported so far is never collected: shorter GC passes
    scenario: Scenario | None = None
    _reply({"ok": True, "pid": os.getpid()})
    for line in sys.stdin.buffer:
        command = orjson.loads(line)
        op = command.get("op")
        try:
            if op == "quit":
                break
            if op == "prepare":
                if scenario is not None:
                    scenario.close()
                scenario = Scenario(Spec.from_dict(command["spec"]))
                loop.run_until_complete(scenario.prepare())
                _reply({"ok": True})
            elif op == "start":
                assert scenario is not None, "start before prepare"
                gc.disable()
                try:
                    result = loop.run_until_complete(scenario.run(float(command["start_at"])))
                finally:
                    gc.enable()
                    scenario.close()
                    scenario = None
                    gc.collect()
                _reply({"ok": True, "result": result})
            else:
                _reply({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as exc:
            _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    for channel in _channels.values():
        loop.run_until_complete(channel.close())
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
