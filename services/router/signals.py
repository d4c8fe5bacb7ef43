"""Engine load signals: what each replica's engine says about its own load, and how fresh it is.

A `Probe` reads one replica's load (for `openai_http` engines, the engine's own
Prometheus `/metrics`; see `adapters/openai_http/probe.py`). The `Poller` runs one
loop per replica, off the request path, each read bounded by a timeout. The
balancer reads the last `Signal` of each replica when it picks one.

A replica whose engine should report its load but has not done so recently (no
good reading for `stale_after_s`: its reads failed, timed out or never came)
counts as saturated, never as idle: an engine too busy to answer `/metrics` must
not attract traffic. One missed read is tolerated while the last good one is
younger than that.
A replica with no signal source at all (a gRPC engine, a hosted API, an engine
whose `/metrics` names nothing we know) is balanced by the router's own count of
its outstanding requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import prometheus_client

from meshgate.v1 import router_pb2

if TYPE_CHECKING:
    from services.router.balancer import Replica

log = logging.getLogger("meshgate.router")

# "none": no signal source; "fresh": a recent reading; "stale": the last reading is too
# old or the last read failed; "missing": no reading yet from an engine that should report.
SignalState = Literal["none", "fresh", "stale", "missing"]
# How often an engine whose /metrics answered without any metric we know is asked again,
# in case its metrics are turned on later.
UNRECOGNISED_RETRY_S = 30.0

POLLS = prometheus_client.Counter(
    "meshgate_router_signal_polls",
    "Reads of an engine's load signals, by outcome (ok, failed, unrecognised).",
    ["target", "outcome"],
)


@dataclass(frozen=True, slots=True)
class Load:
    """One reading of an engine's load, as the engine reported it."""

    # The engine kind whose metrics were read: "vllm", "sglang" or "llama_cpp".
    kind: str
    # Requests the engine holds but has not started (vLLM waiting, SGLang queue,
    # llama.cpp deferred).
    waiting: float
    # Requests the engine is generating right now.
    running: float
    # Share of the KV cache in use, 0..1; None when the engine does not say.
    kv_usage: float | None = None
    # llama.cpp's /slots: how many slots the server has, and how many are busy.
    slots: int | None = None
    busy_slots: int | None = None


class ProbeFailed(Exception):
    """The engine's load could not be read (unreachable, timed out, an error, unparsable)."""


class Probe(Protocol):
    """Reads one replica's load from its engine."""

    # What it reads (the engine's metrics URL): replicas whose probes read the same share one.
    url: str

    async def read(self, timeout: float) -> Load | None:
        """The engine's load; None when it exposes no signal we know (balance it by our
        own count). Raises ProbeFailed when it should have answered and did not."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Signal:
    """The latest reading of one replica and when it arrived (time.monotonic())."""

    interval_s: float = 1.0
    stale_after_s: float = 3.0
    # False once the engine is known to expose nothing we read (or there is no probe).
    expected: bool = True
    load: Load | None = None
    read_at: float = 0.0
    # Requests this router has in flight on the engine, across every replica (catalog
    # name) that shares it; and that count when `load` was read, which does not include
    # the requests sent since.
    inflight: int = 0
    outstanding_at_read: int = 0
    # Why the last read failed; "" after a good one.
    error: str = ""

    def state(self, now: float) -> SignalState:
        if not self.expected:
            return "none"
        if self.load is None:
            return "missing"
        if now - self.read_at > self.stale_after_s:
            return "stale"  # a failed read leaves the last good one in force until then
        return "fresh"

    def age(self, now: float) -> float | None:
        """Seconds since the last good reading; None if there never was one."""
        return now - self.read_at if self.load is not None else None

    def saturated(self, now: float) -> bool:
        return self.state(now) in ("stale", "missing")


_STATES = {
    "none": router_pb2.SIGNAL_STATE_NONE,
    "fresh": router_pb2.SIGNAL_STATE_FRESH,
    "stale": router_pb2.SIGNAL_STATE_STALE,
    "missing": router_pb2.SIGNAL_STATE_MISSING,
}


def signals_proto(signal: Signal, now: float) -> router_pb2.EngineSignals:
    """A replica's signal for ListModelReplicas (the dashboard's engines page)."""
    message = router_pb2.EngineSignals(state=_STATES[signal.state(now)], error=signal.error)
    load = signal.load
    if load is not None and signal.expected:
        message.kind, message.waiting, message.running = load.kind, load.waiting, load.running
        if load.kv_usage is not None:
            message.kv_cache_usage = load.kv_usage
        message.slots, message.busy_slots = load.slots or 0, load.busy_slots or 0
        message.age_seconds = now - signal.read_at
    return message


class Poller:
    """One polling loop per replica that has a probe; started with the router."""

    def __init__(self, replicas: Sequence[Replica]) -> None:
        # One loop per engine: replicas that share a Signal (catalog names for one engine)
        # are read once.
        seen: set[int] = set()
        self._replicas = []
        for r in replicas:
            if r.probe is not None and id(r.signal) not in seen:
                seen.add(id(r.signal))
                self._replicas.append(r)
        self._tasks: list[asyncio.Task[None]] = []

    async def poll_once(self) -> None:
        """Read every replica once, together (at startup, before the first request)."""
        await asyncio.gather(*(self.poll(r) for r in self._replicas))

    async def poll(self, replica: Replica) -> None:
        signal, probe = replica.signal, replica.probe
        assert probe is not None
        outstanding = signal.inflight
        try:
            load = await probe.read(timeout=min(signal.interval_s, signal.stale_after_s))
        except ProbeFailed as exc:
            if not signal.error:
                log.warning(
                    "engine load signals unreadable; the replica counts as saturated",
                    extra={"target": replica.target, "error": str(exc)},
                )
            signal.error = str(exc) or "failed"
            POLLS.labels(replica.target, "failed").inc()
            return
        if load is None:
            signal.expected, signal.load, signal.error = False, None, ""
            POLLS.labels(replica.target, "unrecognised").inc()
            return
        if signal.error:
            log.info("engine load signals readable again", extra={"target": replica.target})
        signal.expected = True
        signal.load, signal.read_at = load, time.monotonic()
        signal.outstanding_at_read, signal.error = outstanding, ""
        POLLS.labels(replica.target, "ok").inc()

    async def _loop(self, replica: Replica) -> None:
        # A random phase, so that replicas are not all read in the same instant.
        await asyncio.sleep(random.uniform(0, replica.signal.interval_s))
        while True:
            started = time.monotonic()
            await self.poll(replica)
            pause = replica.signal.interval_s if replica.signal.expected else UNRECOGNISED_RETRY_S
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(r)) for r in self._replicas]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for replica in self._replicas:
            assert replica.probe is not None
            await replica.probe.close()
