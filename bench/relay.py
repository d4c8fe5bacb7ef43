"""The `relay` scenario: what the mesh spends per streamed chunk, and how many streams it carries.

A streamed answer pays the relay once per token, so the cost that matters is
CPU per chunk, not per request. To measure it without the per-request cost
mixed in, the same schedule of requests is sent twice through one mesh, to two
paced mock engines that differ only in answer length:

- `long`: 64 content chunks, one every `TOKEN_MS` (20 ms), so about 1.3 s a stream;
- `short`: 1 content chunk after the same 20 ms.

`STREAMS` slots (64) each start a stream every `PERIOD_S`, whatever its
answer's length, so both windows carry the same requests per second and the
chunks never ride together (about 3,000 chunks/s, below saturation on 2 cores).
CPU per chunk is then (CPU of the long window - CPU of the short window) /
(chunks of the long window - chunks of the short window), and CPU per request is
the short window's CPU over its requests. Both are reported in µs and in floors
(one empty `grpc.aio` round trip's CPU, bench/floor.py, same run), and per chunk
also in paced server-stream messages (bench/floor.py's `grpc_stream_message`, the
same schedule with nothing but gRPC): the relay's own floor, as each chunk crosses
one such message from the router to the edge.

The ramp then raises the number of concurrent long streams (closed loop) until
the p99 inter-token latency seen by the client grows by more than
`ITL_GROWTH_MS` over the first step's, and reports the last step that held.

The load generator runs in this process with bench/httpclient.py; the mocks are
separate processes, so neither is charged to the mesh, whose CPU is every
process of the `meshgate up` tree (Redis, PostgreSQL and the ledger included).

    python -m bench.relay            # prints the JSON bench/run.py stores under `relay`
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import floor, report
from bench.httpclient import HttpConnection, Response, build_request, split_base_url
from bench.procstat import CpuProbe
from bench.stack import MeshProcess, MockProcess

TOKEN_MS = 20.0
LONG_CHUNKS = 64
STREAMS = 64
# One stream per slot per period: the long answer's 1.28 s plus room to finish.
PERIOD_S = LONG_CHUNKS * TOKEN_MS / 1000 + 0.22
WINDOW_S = 12.0
WARMUP_S = 3.0
RAMP = (64, 128, 192, 256, 384, 512, 768, 1024)
RAMP_WINDOW_S = 6.0
ITL_GROWTH_MS = 20.0
TIMEOUT_S = 30.0
IDLE_S = 5.0


def _models(long_url: str, short_url: str) -> list[dict[str, Any]]:
    def model(model_id: str, url: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "category": "text",
            "context_length": 4096,
            "engines": [{"kind": "openai_http", "url": url, "model": "mock"}],
        }

    return [model("relay-long", long_url), model("relay-short", short_url)]


def _body(model: str) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": LONG_CHUNKS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


class _Tally:
    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.tokens = 0
        self.gaps: list[float] = []
        self.last_error = ""

    def add(self, response: Response) -> None:
        if response.status != 200:
            self.errors += 1
            self.last_error = f"HTTP {response.status}"
            return
        self.requests += 1
        self.tokens += response.tokens
        if response.gaps:
            self.gaps.extend(response.gaps)


async def _slot(
    host: str,
    port: int,
    raw: bytes,
    until: float,
    period: float | None,
    tally: _Tally,
    start: float,
) -> None:
    """Streams one after another on one connection; with `period`, one per period (paced)."""
    conn = await HttpConnection.open(host, port, gaps=True)
    try:
        due = start
        while True:
            now = time.monotonic()
            if period is not None:
                if due > now:
                    await asyncio.sleep(due - now)
                due += period
            if time.monotonic() >= until:
                return
            try:
                tally.add(await conn.request(raw, True, TIMEOUT_S))
            except (ConnectionError, TimeoutError) as exc:
                tally.errors += 1
                tally.last_error = str(exc)
                conn = await HttpConnection.open(host, port, gaps=True)
    finally:
        conn.close()


async def _window(
    base_url: str,
    key: str,
    model: str,
    streams: int,
    seconds: float,
    period: float | None,
    probe: CpuProbe,
) -> dict[str, Any]:
    """`streams` slots for `seconds` (after a warm-up); CPU per label over the measured part."""
    host, port, _ = split_base_url(base_url)
    raw = build_request(base_url, "/chat/completions", key, _body(model))
    warm = _Tally()
    begin = time.monotonic()
    stagger = (period or PERIOD_S) / streams
    await asyncio.gather(
        *(
            _slot(host, port, raw, begin + WARMUP_S, period, warm, begin + i * stagger)
            for i in range(streams)
        )
    )
    tally = _Tally()
    before = probe.snapshot()
    begin = time.monotonic()
    await asyncio.gather(
        *(
            _slot(host, port, raw, begin + seconds, period, tally, begin + i * stagger)
            for i in range(streams)
        )
    )
    elapsed = time.monotonic() - begin
    cpu = probe.delta(before, probe.snapshot())
    tally.gaps.sort()
    return {
        "model": model,
        "streams": streams,
        "seconds": round(elapsed, 2),
        "requests": tally.requests,
        "errors": tally.errors + warm.errors,
        "last_error": tally.last_error or warm.last_error,
        "chunks": tally.tokens,
        "cpu_s": {label: round(value, 4) for label, value in cpu.items()},
        "itl_ms": {
            "p50": round(report.percentile(tally.gaps, 0.50) * 1000, 2) if tally.gaps else None,
            "p99": round(report.percentile(tally.gaps, 0.99) * 1000, 2) if tally.gaps else None,
        },
    }


def _mesh_cpu(window: dict[str, Any]) -> float:
    return float(sum(window["cpu_s"].values()))


def summarize(
    long: dict[str, Any], short: dict[str, Any], floor_cpu_us: float, idle_cpu: float
) -> dict[str, Any]:
    """Per chunk and per request, in µs of mesh CPU and in floors; the idle mesh's CPU
    (pollers, health checks) is taken out first, so that a request is charged only its own."""
    requests = max(short["requests"], 1)
    short_cpu = _mesh_cpu(short) - idle_cpu * short["seconds"]
    per_request_us = short_cpu / requests * 1e6
    # The long window's CPU less the idle mesh's and what its requests cost as requests.
    long_cpu = _mesh_cpu(long) - idle_cpu * long["seconds"]
    chunk_cpu = long_cpu - per_request_us / 1e6 * long["requests"]
    extra_chunks = long["chunks"] - short["chunks"] * long["requests"] / requests
    per_chunk_us = chunk_cpu / max(extra_chunks, 1) * 1e6
    by_process = {
        label: round(
            (long["cpu_s"].get(label, 0.0) - short["cpu_s"].get(label, 0.0))
            / max(extra_chunks, 1)
            * 1e6,
            1,
        )
        for label in long["cpu_s"]
    }
    return {
        "per_chunk_us": round(per_chunk_us, 1),
        "per_chunk_floors": round(per_chunk_us / floor_cpu_us, 3),
        "per_chunk_by_process_us": by_process,
        "per_request_us": round(per_request_us, 1),
        "per_request_floors": round(per_request_us / floor_cpu_us, 2),
        "chunks_per_s": round(long["chunks"] / long["seconds"]),
    }


async def _ramp(base_url: str, key: str, probe: CpuProbe) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    held = 0
    for streams in RAMP:
        step = await _window(base_url, key, "relay-long", streams, RAMP_WINDOW_S, None, probe)
        steps.append(step)
        base = steps[0]["itl_ms"]["p99"]
        p99 = step["itl_ms"]["p99"]
        if step["errors"] or p99 is None or base is None or p99 > base + ITL_GROWTH_MS:
            break
        held = streams
    return {"held_streams": held, "growth_ms": ITL_GROWTH_MS, "steps": steps}


async def _idle(probe: CpuProbe, seconds: float) -> dict[str, float]:
    """CPU seconds per second while nothing is sent (health checks, pollers, flushes)."""
    before = probe.snapshot()
    await asyncio.sleep(seconds)
    return {
        label: value / seconds for label, value in probe.delta(before, probe.snapshot()).items()
    }


async def _measure(mesh: MeshProcess, floor_cpu_us: float, ramp: bool) -> dict[str, Any]:
    probe = CpuProbe(mesh.processes())
    idle = await _idle(probe, IDLE_S)
    long = await _window(mesh.base_url, mesh.key, "relay-long", STREAMS, WINDOW_S, PERIOD_S, probe)
    short = await _window(
        mesh.base_url, mesh.key, "relay-short", STREAMS, WINDOW_S, PERIOD_S, probe
    )
    out: dict[str, Any] = {
        "token_ms": TOKEN_MS,
        "long_chunks": LONG_CHUNKS,
        "streams": STREAMS,
        "period_s": round(PERIOD_S, 3),
        "floor_cpu_us": floor_cpu_us,
        "long": long,
        "short": short,
        "idle_cpu_pct": round(sum(idle.values()) * 100, 1),
        **summarize(long, short, floor_cpu_us, sum(idle.values())),
    }
    if ramp:
        out["ramp"] = await _ramp(mesh.base_url, mesh.key, probe)
    return out


def run_relay(workdir: Path, ledger: bool = True, ramp: bool = True) -> dict[str, Any]:
    """Start two paced mocks and a mesh, measure, stop everything."""
    floor_cpu_us = floor.probe_floor()["grpc_unary"]["cpu_us"]
    stream_floor = floor.probe_stream_floor()
    long_mock = MockProcess(workdir, token_delay_ms=TOKEN_MS, chunks=LONG_CHUNKS, name="mock-long")
    try:
        short_mock = MockProcess(workdir, token_delay_ms=TOKEN_MS, chunks=1, name="mock-short")
        try:
            models = _models(long_mock.base_url, short_mock.base_url)
            mesh = MeshProcess(workdir, 0.0, models=models, name="relay", ledger=ledger)
            try:
                import uvloop

                out = uvloop.run(_measure(mesh, floor_cpu_us, ramp))
                # What one message of the edge <- router stream costs with nothing around it.
                out["stream_message_floor_us"] = stream_floor["cpu_us"]
                out["per_chunk_stream_messages"] = round(
                    out["per_chunk_us"] / stream_floor["cpu_us"], 2
                )
                return out
            finally:
                mesh.stop()
        finally:
            short_mock.stop()
    finally:
        long_mock.stop()


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="meshgate-relay-") as tmp:
        result = run_relay(Path(tmp), ramp="--no-ramp" not in argv)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
