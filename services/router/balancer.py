"""Replica choice: the engines' own load, prefix affinity, and per-replica concurrency limits.

Each candidate gets a score, higher is better: the sum of weighted parts that are
each 0..1 (`services.router.weights`, in the spirit of llm-d's endpoint picker).

- queue: 1 - its queue / (the deepest candidate's + 1, for this request). llm-d
  normalizes min-max, which makes 5 against 6 waiting as decisive as 0 against 60;
  here it is a small difference.
- running: the same, for requests being generated.
- kv_cache: 1 - the engine's KV-cache use.
- prefix: the share of the prompt's leading blocks this replica served recently
  (affinity.py), unless the candidates' loads (queue + running) are imbalanced by
  Shepherd Model Gateway's rule, max - min > balance_abs_threshold and max > min *
  balance_rel_threshold; then affinity yields to load. With the default weights a
  full match outweighs any queue difference short of that imbalance.

Queue and running are the engine's last reading brought up to date with what the
router sent and saw finish since (`estimate`): a reading a second old must not hide
what the router knows now. Where the engine reports nothing (no signal source),
the router's own outstanding count is the queue, as before engine signals. Both
are per unit of `weight` and, for replicas with signals, times their slowness: the
time a request spends on them (`Residence`, Little's law over the router's own
counts) against the quickest candidate's, so that a queue weighs as the wait it
means.

A replica whose signal is stale or missing counts as saturated: it is chosen only
when every candidate is, and then by outstanding count. Replicas at their
`max_concurrency` are skipped; when all are, the request waits for a slot
(bounded), then gets a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from meshgate import errors
from meshgate.config import RouterServiceConfig
from meshgate.v1 import inference_pb2
from services.router.adapters.base import EngineAdapter
from services.router.affinity import AffinityTable, prefix_blocks
from services.router.signals import Probe, Signal

# Why a replica was chosen: "affinity" (it served the prompt's prefix recently), "load"
# (the best score without a prefix match), "yield" (a prefix matched elsewhere but load
# was too uneven), "only" (one candidate), "saturated" (every candidate's signal was stale
# or missing), "unhealthy" (no healthy candidate; an ejected one was tried); and
# "fallback", counted by the fallback chain when a request moves to another model.
REASONS = ("affinity", "load", "yield", "only", "saturated", "unhealthy", "fallback")
DECISIONS = prometheus_client.Counter(
    "meshgate_router_decisions",
    "Routing decisions by model and reason: affinity, load, yield, only, saturated, unhealthy, "
    "fallback.",
    ["model", "reason"],
)
AT_CAPACITY = prometheus_client.Counter(
    "meshgate_router_capacity_rejections",
    "Requests refused with a 503 because every replica was at its max_concurrency.",
    ["model"],
)


@dataclass(eq=False)
class Replica:
    adapter: EngineAdapter
    weight: int = 1
    healthy: bool = True
    outstanding: int = 0
    # Active health checks missed in a row.
    failed_checks: int = 0
    # Times taken out of rotation since the router started.
    ejections: int = 0
    # Requests at once at most; 0 means no limit.
    max_concurrency: int = 0
    # Reads the engine's own load; None: no signal source, balanced by `outstanding`.
    probe: Probe | None = None
    signal: Signal = field(default_factory=Signal)
    # Its identity in the affinity table (the adapter's replica key).
    key: str = ""
    # How long a request stays on it, from the router's own counts (see `Residence`).
    residence: Residence = field(default_factory=lambda: Residence())
    # time.monotonic() of its last answer or streamed chunk: requests in flight that
    # still make progress stand in for a health check (RouterService.check_all).
    progressed_at: float = 0.0

    def __post_init__(self) -> None:
        if self.probe is None:
            self.signal.expected = False
        self.key = self.key or self.target

    @property
    def target(self) -> str:
        return self.adapter.target

    @property
    def full(self) -> bool:
        return 0 < self.max_concurrency <= self.outstanding


@dataclass(slots=True)
class Residence:
    """The mean time a request spends on a replica, by Little's law over the router's own
    outstanding count: the integral of outstanding over time divided by the requests that
    finished, per window of WINDOW_REQUESTS requests (or WINDOW_S seconds), smoothed.

    It turns queue lengths into waits: four waiting on an engine that takes a second per
    request weigh more than four on one that takes a quarter of that. No pairing of
    starts and ends is needed, so concurrent requests cost nothing extra to follow.
    """

    WINDOW_REQUESTS = 8
    WINDOW_S = 2.0
    SMOOTHING = 0.3

    area: float = 0.0  # the integral of outstanding over time, in request-seconds
    at: float = 0.0  # when `area` was last brought up to date
    done: int = 0
    window_area: float = 0.0
    window_done: int = 0
    window_at: float = 0.0
    # Mean seconds per request; None until a window has closed.
    seconds: float | None = None

    def advance(self, outstanding: int, now: float) -> None:
        if self.at:
            self.area += outstanding * (now - self.at)
        self.at = now

    def finished(self, now: float) -> None:
        self.done += 1
        count = self.done - self.window_done
        if count >= self.WINDOW_REQUESTS or (count and now - self.window_at >= self.WINDOW_S):
            mean = (self.area - self.window_area) / count
            old = self.seconds
            self.seconds = mean if old is None else old + self.SMOOTHING * (mean - old)
            self.window_area, self.window_done, self.window_at = self.area, self.done, now


class Estimate(NamedTuple):
    """A replica's load now, from its engine's last reading and what was sent since."""

    queue: float
    running: float
    kv_usage: float | None
    saturated: bool


def estimate(replica: Replica, now: float) -> Estimate:
    """The engine's last reading, brought up to now by what the router did since.

    Requests that finished since the reading left the engine: they come off its queue
    first (a waiting request takes the freed slot), then off its running count.
    Requests sent since are not in it: each is taken to start at once while the engine
    has room (a free llama.cpp slot; KV cache for one more request the size of its
    average running one; any engine that was idle), and to wait past it.
    """
    signal = replica.signal
    state = signal.state(now)
    load = signal.load
    if state == "none" or load is None:
        return Estimate(replica.outstanding, 0.0, None, saturated=state == "missing")
    # The net change since the reading, over every replica (catalog name) on this engine.
    change = signal.inflight - signal.outstanding_at_read
    waiting, running, kv = load.waiting, load.running, load.kv_usage
    if change < 0:
        waiting, left = max(0.0, waiting + change), min(0.0, waiting + change)
        shrunk = max(0.0, running + left)
        if kv is not None and running > 0:
            kv *= shrunk / running
        return Estimate(waiting, shrunk, kv, saturated=state == "stale")
    if load.slots is not None:
        started = min(change, max(0, load.slots - int(running)))
    elif running <= 0 and waiting <= 0:
        started = change
    elif kv is not None and 0 < kv < 1 and waiting <= 0:
        share = kv / max(running, 1.0)
        started = min(change, int((1 - kv) / share))
        kv += started * share
    else:
        started = 0
    return Estimate(waiting + change - started, running + started, kv, saturated=state == "stale")


class Balancer:
    def __init__(self, config: RouterServiceConfig) -> None:
        self._weights = config.weights
        self._affinity = config.affinity
        self._table = AffinityTable(config.affinity)
        self._queue_timeout_s = config.queue_timeout_s
        self._released = asyncio.Event()
        # model -> reason -> choices, for ListModelReplicas (the counter is for Prometheus).
        self.decisions: dict[str, Counter[str]] = {}
        # (model, replica key) -> the replica's score when it was last weighed for the model.
        self.scores: dict[tuple[str, str], float] = {}

    @property
    def affinity_entries(self) -> int:
        return len(self._table)

    def blocks(
        self,
        request: inference_pb2.ChatCompletionRequest
        | inference_pb2.CompletionRequest
        | inference_pb2.EmbeddingRequest,
    ) -> tuple[int, ...]:
        """The prompt's prefix-block hashes; none when affinity is off, or for embeddings
        (no prompt cache to reuse)."""
        if not self._affinity.enabled or not self._weights.prefix:
            return ()
        if isinstance(request, inference_pb2.EmbeddingRequest):
            return ()
        return prefix_blocks(request, self._affinity.block_chars, self._affinity.max_blocks)

    # -------------------------------------------------------------- choice ----

    def choose(
        self,
        candidates: Sequence[Replica],
        blocks: tuple[int, ...] = (),
        now: float = 0.0,
        model: str = "",
    ) -> tuple[Replica, str] | None:
        """The best candidate and why; None when every one is at its max_concurrency.

        When no candidate is healthy, an ejected one is tried rather than failing
        outright (Envoy's "panic" routing): health can lag behind a recovery, and a
        dead replica refuses a connection fast.
        """
        now = now or time.monotonic()
        healthy = [r for r in candidates if r.healthy]
        open_ = [r for r in (healthy or candidates) if not r.full]
        if not open_:
            return None
        estimates = {r: estimate(r, now) for r in open_}
        known = [r for r in open_ if not estimates[r].saturated]
        if not healthy or not known:
            best = _least(open_, lambda r: r.outstanding / r.weight)
            chosen = best, "unhealthy" if not healthy else "saturated"
        elif len(known) == 1:
            chosen = known[0], "only"
        else:
            chosen = self._score(known, estimates, blocks, now, model)
        if blocks:  # its engine will hold this prefix now
            self._table.record(blocks, chosen[0].key, now)
        return chosen

    def _score(
        self,
        known: list[Replica],
        estimates: dict[Replica, Estimate],
        blocks: tuple[int, ...],
        now: float,
        model: str,
    ) -> tuple[Replica, str]:
        w = self._weights
        pace = _slowness(known)
        queue = {r: estimates[r].queue / r.weight * pace[r] for r in known}
        running = {r: estimates[r].running / r.weight * pace[r] for r in known}
        deepest, busiest = max(queue.values()), max(running.values())
        loads = [queue[r] + running[r] for r in known]
        low, high = min(loads), max(loads)
        imbalanced = (
            high - low > self._affinity.balance_abs_threshold
            and high > low * self._affinity.balance_rel_threshold
        )
        matched = self._table.longest(blocks, now) if blocks else {}
        scores: dict[Replica, float] = {}
        for r in known:
            kv = estimates[r].kv_usage
            scores[r] = (
                w.queue * (1 - queue[r] / (deepest + 1))
                + w.running * (1 - running[r] / (busiest + 1))
                + w.kv_cache * (1 - min(1.0, max(0.0, kv if kv is not None else 0.0)))
            )
            if matched and not imbalanced:
                scores[r] += w.prefix * matched.get(r.key, 0) / len(blocks)
            self.scores[(model, r.key)] = scores[r]
        best = _least(known, lambda r: -scores[r])
        if matched.get(best.key):
            return best, "affinity"
        return best, "yield" if matched and imbalanced else "load"

    # ------------------------------------------------ concurrency limits ----

    async def acquire(
        self,
        model: str,
        replicas: Sequence[Replica],
        tried: Sequence[Replica],
        blocks: tuple[int, ...],
        timeout: float,
    ) -> Replica | None:
        """A replica for the next attempt, counted as outstanding; `release` it after.

        Untried replicas first, else one tried once: a replica may be a multi-address
        target (`meshgate up --replicas engine=2`) whose next call reaches another
        address. None when every replica was tried. When every candidate is at its
        max_concurrency, waits for a slot up to `queue_timeout_s` (or the request's
        `timeout`, if sooner), then raises a 503 with Retry-After.
        """
        pool = [r for r in replicas if r not in tried] or [
            r for r in replicas if tried.count(r) < 2
        ]
        if not pool:
            return None
        deadline = time.monotonic() + min(self._queue_timeout_s, timeout)
        while True:
            now = time.monotonic()
            chosen = self.choose(pool, blocks, now, model)
            if chosen is not None:
                replica, reason = chosen
                replica.residence.advance(replica.outstanding, now)
                if not replica.outstanding:  # busy from now: its progress is counted from here
                    replica.progressed_at = now
                replica.outstanding += 1
                replica.signal.inflight += 1
                self.count(model, reason)
                return replica
            if now >= deadline:
                AT_CAPACITY.labels(model).inc()
                raise errors.engines_busy(model)
            released = self._released
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), deadline - now)

    def count(self, model: str, reason: str) -> None:
        """One routing decision for `model`, on /metrics and in ListModelReplicas. The
        fallback chain counts "fallback" here when it moves a request to another model."""
        DECISIONS.labels(model, reason).inc()
        self.decisions.setdefault(model, Counter())[reason] += 1

    def release(self, replica: Replica) -> None:
        """The attempt on `replica` is over; a request waiting for a slot may take it."""
        now = time.monotonic()
        replica.residence.advance(replica.outstanding, now)
        replica.outstanding -= 1
        replica.signal.inflight -= 1
        replica.residence.finished(now)
        if replica.max_concurrency:
            self._released.set()
            self._released = asyncio.Event()


# The most one replica's requests may weigh against the fastest candidate's.
MAX_SLOWNESS = 10.0


def _slowness(replicas: Sequence[Replica]) -> dict[Replica, float]:
    """Each replica's time per request against the quickest candidate's (1 for the quickest,
    and for any replica without an engine signal or without a measure yet: balanced by
    outstanding count alone, as before engine signals)."""
    seconds = {
        r: r.residence.seconds
        for r in replicas
        if r.residence.seconds and r.signal.load is not None and r.signal.expected
    }
    if len(seconds) < 2:
        return dict.fromkeys(replicas, 1.0)
    quickest = min(seconds.values())
    return {r: min(MAX_SLOWNESS, seconds[r] / quickest) if r in seconds else 1.0 for r in replicas}


def _least(replicas: Sequence[Replica], cost: Callable[[Replica], float]) -> Replica:
    """The replica of lowest `cost`, ties broken at random."""
    costs = [cost(r) for r in replicas]
    lowest = min(costs)
    return random.choice([r for r, c in zip(replicas, costs, strict=True) if c == lowest])


class ReplicaCollector(Collector):
    """Per-replica signals, their age and the last scores, read when /metrics is scraped
    (nothing on the request path). Catalog names that share one engine share its series."""

    def __init__(self, models: Sequence[tuple[str, Sequence[Replica]]], balancer: Balancer) -> None:
        self._models = models
        self._balancer = balancer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.monotonic()
        labels = ["target", "kind"]
        families = {
            "waiting": GaugeMetricFamily(
                "meshgate_router_replica_waiting",
                "Requests waiting in the engine's queue, as it last reported.",
                labels=labels,
            ),
            "running": GaugeMetricFamily(
                "meshgate_router_replica_running",
                "Requests the engine is generating, as it last reported.",
                labels=labels,
            ),
            "kv": GaugeMetricFamily(
                "meshgate_router_replica_kv_cache_usage",
                "The engine's KV-cache use (0..1), as it last reported.",
                labels=labels,
            ),
            "age": GaugeMetricFamily(
                "meshgate_router_replica_signal_age_seconds",
                "Seconds since the engine's load was last read.",
                labels=labels,
            ),
            "saturated": GaugeMetricFamily(
                "meshgate_router_replica_signal_saturated",
                "1 while the engine's load signal is stale or missing (counted as saturated).",
                labels=labels,
            ),
            "outstanding": GaugeMetricFamily(
                "meshgate_router_replica_outstanding",
                "Requests this router has in flight on the engine.",
                labels=["target"],
            ),
            "score": GaugeMetricFamily(
                "meshgate_router_replica_score",
                "The replica's score when last weighed for the model (higher is better).",
                labels=["model", "target"],
            ),
        }
        by_target: dict[str, list[Replica]] = {}
        for model, replicas in self._models:
            for r in replicas:
                sharing = by_target.setdefault(r.target, [])
                if r not in sharing:
                    sharing.append(r)
                score = self._balancer.scores.get((model, r.key))
                if score is not None:
                    families["score"].add_metric([model, r.target], score)
        for target, sharing in by_target.items():
            families["outstanding"].add_metric([target], sum(r.outstanding for r in sharing))
            signal = sharing[0].signal
            load = signal.load
            if not signal.expected:
                continue
            kind = load.kind if load is not None else ""
            families["saturated"].add_metric([target, kind], 1.0 if signal.saturated(now) else 0)
            if load is None:
                continue
            families["waiting"].add_metric([target, kind], load.waiting)
            families["running"].add_metric([target, kind], load.running)
            if load.kv_usage is not None:
                families["kv"].add_metric([target, kind], load.kv_usage)
            families["age"].add_metric([target, kind], now - signal.read_at)
        yield from families.values()
        entries = GaugeMetricFamily(
            "meshgate_router_affinity_entries", "Prefix-block hashes in the affinity table."
        )
        entries.add_metric([], self._balancer.affinity_entries)
        yield entries
