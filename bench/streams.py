"""The `streams_rss` scenario: many streams held open at once, and the mesh's memory meanwhile.

A stream holds something in every hop for its whole life (a socket and a task
in the edge, an HTTP/2 stream and a task in the router and the engine, a lease
in quota), so memory per open stream, not CPU per request, is what limits how
many slow clients a gateway can serve. The target is 2,000 concurrent streams
with at most 500 MB of RSS across the mesh.

The scenario starts its own mesh behind a slow engine (one token per
`STREAM_TOKEN_DELAY_MS`, so a 16-token answer stays open ~15 s): once behind the
paced mock over HTTP (the issue's setup; the mock is outside the measured tree,
and the mesh runs no engine process), once behind the reference engine. It opens N
streaming requests through the edge, waits until every one has received its
first content token, samples the memory of every process in the `meshgate up`
tree (Redis included), then closes all the connections. The client is a bare
`asyncio.Protocol` per stream that only looks for the first content token and
the end of the stream: 2,000 of them cost the generator a few MB and next to
no CPU, so the mesh gets the machine.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from bench import report
from bench.httpclient import TOKEN_EVENT, build_request, split_base_url
from bench.procstat import memory_kib, unique_resident_kib

# The engines the scenario runs behind, the setup first: an OpenAI-compatible
# HTTP engine (bench/mock_openai.py, paced), then the built-in reference engine.
UPSTREAMS = ("mock", "reference")
# Slow enough that N streams are all open at once, fast enough to stay bounded.
STREAM_TOKEN_DELAY_MS = 1000.0
# Connections being opened at once: well under the edge's listen backlog (2048).
CONNECT_PARALLEL = 128
# Every stream must have its first token within this time, or it counts as an error.
FIRST_TOKEN_TIMEOUT_S = 30.0
# After closing, time for the mesh to cancel the streams before it is stopped.
SETTLE_S = 1.0
MEMORY_BASIS = (
    "distinct resident pages of the meshgate up tree, each physical page once "
    "(/proc/PID/pagemap; the goal's figure); Pss (psutil's memory_full_info().pss) and "
    "VmRSS (psutil's rss) summed per process alongside (RSS counts a page shared by "
    "the forked services once per process, so its sum overstates)"
)
ERROR_SAMPLES = 5


class HeldStream(asyncio.Protocol):
    """One streaming request on its own connection, sent as soon as the connection is up."""

    def __init__(self, raw: bytes, first: asyncio.Future[float]) -> None:
        self.raw = raw
        self.first = first
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.status = 0
        self.ended = False  # the stream finished ([DONE]) before we closed it
        self.lost = False
        self._head = bytearray()
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sent_at = time.monotonic()
        self.transport.write(self.raw)

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self._head += data
            if len(self._head) < 12:
                return
            self.status = int(self._head[9:12])
            if self.status != 200:
                self._fail(f"HTTP {self.status}: {bytes(self._head)[:200]!r}")
                return
            data = bytes(self._head)
            self._head.clear()
        window = self._tail + data  # an event split across reads is still seen whole
        if not self.first.done() and TOKEN_EVENT.search(window):
            self.first.set_result(time.monotonic())
        if b"[DONE]" in window:
            self.ended = True
        self._tail = window[-64:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.first.done():
            self.first.set_exception(ConnectionError(f"closed before the first token: {exc}"))

    def _fail(self, message: str) -> None:
        if not self.first.done():
            self.first.set_exception(ConnectionError(message))
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `needed` (children inherit it).

    Each held stream is one socket here and one in the edge; the mesh is started
    after this call, so its processes get the same limit. Returns the soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


def tree_memory(processes: dict[int, str]) -> dict[str, Any]:
    """RSS and Pss per process label and in total, and the tree's distinct resident pages
    (None without the privilege to read them), in KiB (see MEMORY_BASIS)."""
    by_process: dict[str, dict[str, int]] = {}
    for pid, label in processes.items():
        memory = memory_kib(pid)
        if memory is None:
            continue
        entry = by_process.setdefault(label, {"rss_kib": 0, "pss_kib": 0})
        entry["rss_kib"] += memory[0]
        entry["pss_kib"] += memory[1]
    return {
        "rss_kib_total": sum(e["rss_kib"] for e in by_process.values()),
        "pss_kib_total": sum(e["pss_kib"] for e in by_process.values()),
        "unique_kib_total": unique_resident_kib(list(processes)),
        "processes": len(by_process),
        "by_process": by_process,
    }


async def _hold(
    base_url: str,
    key: str,
    body: bytes,
    count: int,
    sample: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port, _ = split_base_url(base_url)
    raw = build_request(base_url, "/chat/completions", key, body)
    gate = asyncio.Semaphore(CONNECT_PARALLEL)
    streams: list[HeldStream] = []
    errors: dict[str, int] = {}

    def error(message: str, times: int = 1) -> None:
        known = len(errors) < ERROR_SAMPLES or message in errors
        slot = message if known else "(other errors)"
        errors[slot] = errors.get(slot, 0) + times

    async def open_one() -> None:
        first: asyncio.Future[float] = loop.create_future()
        async with gate:
            try:
                _, stream = await loop.create_connection(lambda: HeldStream(raw, first), host, port)
            except OSError as exc:
                error(f"connect: {type(exc).__name__}: {exc}")
                return
        streams.append(stream)
        try:
            await first
        except ConnectionError as exc:
            error(str(exc))

    started = time.monotonic()
    openers = [asyncio.ensure_future(open_one()) for _ in range(count)]
    _, pending = await asyncio.wait(openers, timeout=FIRST_TOKEN_TIMEOUT_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        error(f"no first token within {FIRST_TOKEN_TIMEOUT_S:g}s", len(pending))
    opened_s = time.monotonic() - started
    # A stream whose opener timed out had its wait (and so its future) cancelled.
    with_token = [
        s for s in streams if s.first.done() and not s.first.cancelled() and not s.first.exception()
    ]
    held = [s for s in with_token if not s.ended and not s.lost]
    # Answered, but already finished when the last one opened: not held at the sample.
    ended_early = len(with_token) - len(held)
    memory = sample()  # while every stream that made it is open
    for stream in streams:
        stream.close()
    await asyncio.sleep(SETTLE_S)
    ttft = [s.first.result() - s.sent_at for s in with_token]
    return {
        "requested": count,
        "held": len(held),
        "errors": count - len(with_token),
        "error_samples": errors,
        "ended_early": ended_early,
        "open_s": round(opened_s, 2),
        "ttft_us": report.distribution_us(ttft),
        "memory": memory,
    }


def hold_streams(
    base_url: str,
    key: str,
    body: bytes,
    count: int,
    sample: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Open `count` streams, wait for every first token, call `sample()`, close them all."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_hold(base_url, key, body, count, sample))
    return uvloop.run(_hold(base_url, key, body, count, sample))
